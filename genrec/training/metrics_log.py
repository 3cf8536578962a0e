"""The training run's metrics log (``<output_dir>/metrics.jsonl``): one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path

from genrec.io import atomic_write_text


class MetricsLog:
    """Append-only JSON lines; each line flushed so a crash loses nothing logged."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop the rows of steps after ``step`` (logged by a run killed after its last checkpoint, which the
        resumed run logs again), and a last line cut off mid-write; atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by the kill
            if row.get("step", 0) <= step:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))
