"""Structured training records: one JSON object per line next to the text log.

The text log is for people; `exp/log/records-train[-rank<R>].jsonl` is for programs (tests,
plotting, dashboards): every progress line, skipped batch, validation and checkpoint is also
written here with its numbers as numbers. A resumed run appends to the same file.

Example line::

    {"event": "batch", "epoch": 1, "batch": 50, "global": 50, "loss": {"ctc_loss": 1.2, ...},
     "tot_loss": {...}, "lr": 0.045, "frames_per_s": 890.1, "real_time": 32.8, "eta_min": 0.9}
"""
import json
from pathlib import Path
from typing import Any, Optional


class TrainingRecords:
    """Appends JSON lines to `<log_dir>/records-train[-rank<R>].jsonl`."""

    def __init__(self, log_dir: Path, rank: int = 0, world_size: int = 1):
        name = "records-train.jsonl" if world_size == 1 else f"records-train-rank{rank}.jsonl"
        self.path = Path(log_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        """One record: {"event": event, **fields}; flushed at once so a killed run keeps it."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n")


def read_records(path: Path, event: Optional[str] = None) -> list:
    """The records of a file, optionally only those of one event."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if event is None or r["event"] == event]
