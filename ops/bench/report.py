"""What the two-way benchmarks share: percentiles, the table of a reference against a candidate (with their
ratio, measured in the same run) and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def compare(
    results: dict[str, Any], reference: str, candidate: str, rows: list[tuple[str, str]], json_path: Path | None
) -> None:
    """Print ``rows`` (label, key) of ``results[reference]`` and ``results[candidate]`` with candidate/reference,
    and write ``results`` to ``json_path`` when given."""
    width = max(len(label) for label, _ in rows) + 2
    ratio = f"{candidate}/{reference}"
    print(f"\n{'':{width}} {reference:>9} {candidate:>9} {ratio:>{len(ratio) + 2}}")
    for label, key in rows:
        base, other = results[reference][key], results[candidate][key]
        print(f"{label:{width}} {base:9.2f} {other:9.2f} {other / base if base else float('inf'):{len(ratio) + 2}.2f}")
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2))
        print(f"\nwritten {json_path}")
