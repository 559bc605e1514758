"""The HTTP gateway (``llm-router serve``): the jobs API and OpenAI-compatible endpoints over the asyncio
client, behind API keys that name a tenant. See ``llm_router.gateway.app``."""
