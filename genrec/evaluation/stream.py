"""Rankings streamed to disk while an evaluation runs, so the finished part of a long one (all 22,363 Amazon
Beauty users take about 8 minutes on 2 cores) is on disk as it goes and a killed one resumes where it stopped.

Each process appends every finished batch of cases to its own ``<stem>.partial-<rank>.jsonl`` (a header
line with the run's fingerprint, then one line per case: its catalog indices, scores and, with a
rationale template, the rationale) and flushes it. A new run with the same fingerprint (checkpoint,
config, split, k, cases) reads every partial file there first and ranks only the cases they lack;
another fingerprint, or a line cut short by the kill, is not trusted: the first starts over, the second
is ranked again. The final ``rankings.jsonl`` is still written once, whole, by the caller; the partial
files are removed after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger("genrec")


def run_fingerprint(**parts) -> str:
    """A short hash of everything that decides a ranking (JSON-serialisable values; others by ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_state(folder: Path | None) -> list:
    """What identifies a checkpoint's weights without reading them: each file's name, size and mtime."""
    if folder is None:
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in Path(folder).rglob("*") if p.is_file())


class RankingStream:
    """This process's partial rankings file in ``folder``, and what every process had written there."""

    def __init__(self, folder: Path, stem: str, fingerprint: str, rank: int = 0):
        self.folder, self.stem, self.fingerprint = Path(folder), stem, fingerprint
        self.path = self.folder / f"{stem}.partial-{rank}.jsonl"
        self.resumed = 0  # cases load() found on disk
        self._loaded = None

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.stem}.partial-*.jsonl"))

    def load(self) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str]]:
        """The rankings (case id → [(catalog index, score)]) and rationales already on disk for this
        fingerprint; files of another run are ignored (and replaced when this process writes). Read once:
        later calls return the first answer. Under several processes every one must have read before any
        writes (a barrier after this call), or one would take another's fresh lines as done and skip them."""
        if self._loaded is not None:
            return self._loaded
        done, why = {}, {}
        for path in self.files():
            lines = path.read_text(encoding="utf-8").split("\n")
            try:
                header = json.loads(lines[0])
            except json.JSONDecodeError:
                continue
            if header.get("fingerprint") != self.fingerprint:
                log.info("%s: partial rankings of another run (checkpoint, config or cases differ): not used", path)
                continue
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # empty, or the line a kill cut short: that case is ranked again
                    continue
                done[row["case_id"]] = [(int(i), float(s)) for i, s in zip(row["items"], row["scores"])]
                if "rationale" in row:
                    why[row["case_id"]] = row["rationale"]
        self.resumed = len(done)
        self._loaded = (done, why)
        if done:
            log.info("resuming: %d cases already ranked in %s", len(done), self.folder)
        return done, why

    def open(self):
        """Start (or continue) this process's file: appended to when it holds this run's lines, else new."""
        self.folder.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        try:
            fresh = json.loads(text.split("\n", 1)[0]).get("fingerprint") != self.fingerprint
        except json.JSONDecodeError:
            fresh = True
        handle = self.path.open("w" if fresh else "a", encoding="utf-8")
        if fresh:
            handle.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
        elif not text.endswith("\n"):
            handle.write("\n")  # end a line a kill cut short, so the next one parses
        handle.flush()
        return handle

    @staticmethod
    def append(handle, part: dict[str, list[tuple[int, float]]], rationales: dict[str, str]) -> None:
        for case_id, ranked in part.items():
            # scores unrounded: JSON floats round-trip, so a resumed rankings.jsonl equals an uninterrupted one
            row = {"case_id": case_id, "items": [i for i, _ in ranked], "scores": [float(s) for _, s in ranked]}
            if case_id in rationales:
                row["rationale"] = rationales[case_id]
            handle.write(json.dumps(row) + "\n")
        handle.flush()

    def remove_all(self) -> None:
        """Every process's partial file (after the whole rankings file is written)."""
        for path in self.files():
            path.unlink(missing_ok=True)
