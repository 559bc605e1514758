"""Token counts of remote responses without usage: the model's own tokenizer, without transformers or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from transformers import AutoTokenizer

from llm_router.workers.backends.usage import TokenCounter
from llm_router.workers.bundled.prepare import MINILM_ID, SMOLLM_ID

TEXTS = ["Queues carry jobs, not prompts.", "naïve café — déjà vu", ""]


def test_counts_equal_the_fast_tokenizer_of_transformers(models_dir: Path) -> None:
    counter = TokenCounter(models_dir, None)
    for model_id in (MINILM_ID, SMOLLM_ID):
        reference = AutoTokenizer.from_pretrained(models_dir / model_id)
        expected = sum(len(reference(text, add_special_tokens=False).input_ids) for text in TEXTS)
        assert counter.count(model_id, TEXTS) == (expected, False)


def test_a_model_without_a_local_tokenizer_is_estimated(tmp_path: Path) -> None:
    assert TokenCounter(tmp_path, tmp_path).count("org/remote-only", ["abcdefgh", "abcd"]) == (3, True)


def test_counting_never_imports_torch(models_dir: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from workers.backends.usage import TokenCounter; "
        f"print(TokenCounter(Path({str(models_dir)!r}), None).count({MINILM_ID!r}, ['a few words'])); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "False" and "False)" in out
