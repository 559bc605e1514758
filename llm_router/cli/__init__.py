"""The ``llm-router`` command line."""
