"""Real small models that ship inside PyPI packages, made available offline under their Hub ids."""
