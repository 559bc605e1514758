"""A nightly batch: classify (or embed) every line of a JSON Lines file through the cluster's bulk lanes and
write the answers, in input order, beside the ids.

    python examples/nightly_batch.py reviews.jsonl labels.jsonl --kind classify --tier fast

Each input line is ``{"id": …, "text": …}``. The batch's idempotency key is the input's name and tonight's
date: run again after a crash (or twice by cron) and the same jobs are found, none submitted twice, the
finished ones not run again. Exit status 0 when every line has its answer, 1 when some failed (they are
written with their error), 2 for a bad input file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from llm_router import JobStatus, Router

FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.CANCELLED, JobStatus.EXPIRED}


def read_lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
            raise ValueError(f'{path}:{number}: expected {{"id": …, "text": "…"}}')
        rows.append(row)
    return rows


def answer(kind: str, result: dict[str, Any]) -> Any:
    if kind == "classify":
        return result["labels"][0]["label"]
    return result["data"][0]["embedding"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--kind", choices=["classify", "embed"], default="classify")
    parser.add_argument("--tier", default="fast")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the whole batch")
    options = parser.parse_args()
    try:
        rows = read_lines(options.input)
    except (OSError, ValueError) as exc:
        print(f"nightly batch: {exc}", file=sys.stderr)
        return 2
    key = f"nightly:{options.input.name}:{datetime.date.today().isoformat()}"
    requests = [{"kind": options.kind, "input": row["text"], "tier": options.tier} for row in rows]
    with Router() as router:
        submitted = router.batch(requests, idempotency_key=key)
        deadline = time.monotonic() + options.timeout
        while True:
            counts = router.batch_progress(submitted.batch_id)
            waiting = sum(n for status, n in counts.items() if status not in FINAL)
            print(f"batch {submitted.batch_id}: {counts}", file=sys.stderr)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        failed = 0
        with options.output.open("w") as out:
            for position, row in enumerate(rows):
                job = submitted.jobs.get(position)
                record = job.record() if job is not None else None
                if record is not None and record.status == JobStatus.SUCCEEDED and record.result is not None:
                    line = {"id": row["id"], "answer": answer(options.kind, record.result)}
                else:
                    failed += 1
                    error = submitted.errors.get(position) or (record.error if record else None) or "not finished"
                    line = {"id": row["id"], "error": error}
                out.write(json.dumps(line) + "\n")
    print(f"{len(rows) - failed} answered, {failed} not", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
