"""A mkdocs hook: the HTTP API reference is written from the gateway's own OpenAPI document when the site is
built, so that it lists exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- the gateway's routes -->"
TAG_TITLES = {
    "operations": "Operations",
    "jobs": "Jobs API",
    "openai": "OpenAI-compatible",
    "inference api": "Hugging Face Inference API",
}


def routes_table(document: dict[str, Any]) -> str:
    """The routes of an OpenAPI document, grouped by tag: method, path, whether a key is needed, what it does."""
    groups: dict[str, list[str]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            tag = (operation.get("tags") or ["other"])[0]
            keyed = bool(operation.get("security"))
            # The route's docstring, one paragraph, with reStructuredText's literals as Markdown's.
            what = " ".join((operation.get("description") or operation.get("summary") or "").split()).replace("``", "`")
            row = f"| `{method.upper()}` | `{path}` | {'key' if keyed else 'none'} | {what} |"
            groups.setdefault(tag, []).append(row)
    sections = []
    for tag in [*TAG_TITLES, *sorted(set(groups) - set(TAG_TITLES))]:
        if tag in groups:
            header = "| method | path | auth | what it does |\n|---|---|---|---|"
            sections.append(f"## {TAG_TITLES.get(tag, tag)}\n\n{header}\n" + "\n".join(groups[tag]))
    return "\n\n".join(sections)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from llm_router.gateway.app import create_app

    return markdown.replace(MARKER, routes_table(create_app().openapi()))
