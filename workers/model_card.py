"""What a model folder on this machine says of itself (a prepared bundled model, or any folder a catalogue
entry loads): its card's front matter, its configuration and its weights, read without torch or the network.
``llm-router models info`` shows it when the Hub cannot be asked."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from llm_router.broker.hub import ModelDetails
from llm_router.workers.bundled.prepare import STAMP


def front_matter(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a model card (between two ``---`` lines), or nothing."""
    try:
        text = readme.read_text()
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    head, _, _ = text[3:].partition("\n---")
    import yaml

    try:
        loaded = yaml.safe_load(head)
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def safetensors_parameters(folder: Path) -> int | None:
    """How many parameters the folder's safetensors files hold, from their headers alone."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as weights:
            (length,) = struct.unpack("<Q", weights.read(8))
            header = json.loads(weights.read(length))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total


def local_details(folder: Path, model_id: str, task: str | None = None) -> ModelDetails | None:
    """The details of a model folder, or None when the folder holds no model."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    card = front_matter(folder / "README.md")
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        stamp = None
    weights = sum(path.stat().st_size for path in folder.glob("*.safetensors")) or None
    tags: list[Any] = card["tags"] if isinstance(card.get("tags"), list) else []
    return ModelDetails(
        id=model_id,
        task=task or card.get("pipeline_tag"),
        library=card.get("library_name") or "transformers",
        downloads=None,
        likes=None,
        tags=[str(tag) for tag in tags],
        parameters=safetensors_parameters(folder),
        weights_bytes=weights,
        licence=card.get("license"),
        gated=False,
        revision=json.dumps(stamp, sort_keys=True) if stamp else None,
        last_modified=None,
        providers=[],
    )
