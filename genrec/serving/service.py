"""Recommendations as a service: one loaded model, requests validated against the catalog, concurrent
rankings batched into one forward pass, explanations on request (genrec.explain.top_k).

The HTTP layer is genrec.serving.app; this module knows nothing of HTTP: a bad request is a ``RequestError``
with the status it deserves (404 unknown user, 422 unknown titles with their close matches) and a message.

Threads: the web server calls ``recommend`` from many threads. One model thread loads the model and runs
every forward pass: rankings reach it through a queue, and it takes every request waiting (up to
decode.batch_users, after at most ``batch_wait_ms``) and ranks them in one ``Recommender.rank`` call;
explanations reach it through the same queue. So the model runs one batch at a time, and always on the
thread that loaded it. Why the same thread: PyTorch's OpenMP pool belongs to the thread that first ran a
parallel operation. Once the loading thread owns one, a second thread running the model gets its own pool,
and on 2 cores the two pools' idle workers make each matrix product wait. Measured on the AMX Xeon
(BENCHMARKS.md, "Serving from the thread that loaded the model"): a bf16 linear took 131 µs on the
loading thread and 236 µs on another, and a top-10 request 62 ms against 129 ms.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from genrec.config import Config
from genrec.data.splits import Example
from genrec.errors import ConfigError, DataError, suggest
from genrec.explain.top_k import RankingExplainer, explanation_template
from genrec.model.loading import resolve_dtype
from genrec.recommender import Recommender

log = logging.getLogger("genrec")


class RequestError(Exception):
    def __init__(self, status: int, message: str, unknown: list[dict] | None = None):
        super().__init__(message)
        self.status, self.message, self.unknown = status, message, unknown


@dataclass
class Request:
    user_id: str | None = None
    history: list[str] | None = None  # item ids or titles, oldest first
    k: int = 10
    explain: bool = False
    exclude_seen: bool = True


class RecommendationService:
    def __init__(self, cfg: Config, batch_wait_ms: float = 5.0):
        def check(setup) -> None:
            if setup.template.answers:
                raise ConfigError(f"{setup.template.source} is pointwise (yes/no about one item); it cannot serve "
                                  "rankings")
            explanation_template(setup)  # explanations must be possible before the server says it is up

        self.cfg = cfg
        self.batch_wait = batch_wait_ms / 1000
        self.jobs: queue.Queue = queue.Queue()  # ("rank", example, excluded, k, future) or ("call", fn, future)
        self.batches = 0  # rank() calls, for tests and /health
        loaded: Future = Future()
        self.worker = threading.Thread(target=self._model_thread, args=(check, loaded), name="genrec-model",
                                       daemon=True)
        self.worker.start()
        loaded.result()  # a config or checkpoint error is raised here, in the caller
        self.split = self.recommender.setup.split
        self.catalog = self.split.catalog
        self.max_k = max(self.recommender.options.num_beams, cfg.recommend.k)

    # ---- requests
    def resolve(self, request: Request) -> tuple[Example, set[int]]:
        """The request as an example (its most recent data.max_history items) and the items it has seen."""
        if (request.user_id is None) == (request.history is None):
            raise RequestError(422, "give either user_id or history (item ids or titles), not both")
        if not 1 <= request.k <= self.max_k:
            raise RequestError(422, f"k must be between 1 and {self.max_k} (decode.num_beams), got {request.k}")
        max_history = self.cfg.data.max_history
        if request.user_id is not None:
            user = str(request.user_id)
            if user not in self.split.sequences:
                raise RequestError(404, f"unknown user {user!r}{suggest(user, list(self.split.sequences)[:5000])}")
            sequence = self.split.sequences[user]
            return Example(user, tuple(sequence[-max_history:]), None), set(sequence)
        if not request.history:
            raise RequestError(422, "history is empty: give at least one item id or title")
        items, unknown = [], []
        for query in request.history:
            try:
                items.append(self.catalog.find(str(query)))
            except DataError:
                unknown.append({"query": str(query), "close_matches": self.catalog.close_matches(str(query))})
        if unknown:
            listed = "; ".join(f"{u['query']!r} (close: {', '.join(map(repr, u['close_matches'])) or 'none'})"
                               for u in unknown)
            raise RequestError(422, f"{len(unknown)} of {len(request.history)} history items are not in the catalog "
                                    f"(by title or item id): {listed}", unknown)
        indices = tuple(it.index for it in items)
        return Example("request", indices[-max_history:], None), set(indices)

    def recommend(self, request: Request) -> dict:
        start = time.perf_counter()
        example, seen = self.resolve(request)
        ranked = self.rank(example, seen if request.exclude_seen else set(), request.k)
        ranked_at = time.perf_counter()
        explained = self.on_model_thread(lambda: self.explainer(example, ranked)) if request.explain else None
        done = time.perf_counter()
        items = []
        for r, (item, score) in enumerate(ranked, start=1):
            row = {"rank": r, "item_id": self.catalog[item].item_id, "title": self.catalog[item].text,
                   "score": round(score, 4)}
            if explained is not None:
                e = explained[r - 1]
                row.update(explanation=e.explanation, cited=[self.catalog[i].text for i in e.cited],
                           claims=[{"kind": c.kind, "about": c.about, "value": c.value, "true": c.true}
                                   for c in e.claims], claims_true=e.claims_true)
            items.append(row)
        return {"user_id": example.user_id,
                "history": [{"item_id": self.catalog[i].item_id, "title": self.catalog[i].text} for i in example.history],
                "items": items,
                "timing_ms": {"rank": round(1000 * (ranked_at - start), 1),
                              "explain": round(1000 * (done - ranked_at), 1) if request.explain else 0.0}}

    def titles(self, query: str, limit: int = 10) -> list[dict]:
        """Catalog titles containing ``query`` (case-insensitive), shortest first: the page's autocomplete."""
        q = query.strip().lower()
        if not q:
            return []
        hits = [it for it in self.catalog.items if q in it.text.lower()]
        hits.sort(key=lambda it: (not it.text.lower().startswith(q), len(it.text)))
        return [{"item_id": it.item_id, "title": it.text} for it in hits[:limit]]

    def users(self, limit: int = 50) -> list[str]:
        return self.split.eval_users[:limit]

    # ---- the model thread
    def rank(self, example: Example, excluded: set[int], k: int) -> list[tuple[int, float]]:
        job: Future = Future()
        self.jobs.put(("rank", example, excluded, k, job))
        return job.result()

    def on_model_thread(self, fn):
        """``fn()`` run by the model thread, between ranking batches."""
        job: Future = Future()
        self.jobs.put(("call", fn, job))
        return job.result()

    def _model_thread(self, check, loaded: Future) -> None:
        try:
            self.recommender, self.checkpoint = Recommender.load(self.cfg, check=check)
            self.explainer = RankingExplainer(self.recommender)
            dtype = resolve_dtype(self.cfg.model.dtype)
            device = next(self.recommender.model.parameters()).device
            self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 \
                else contextlib.nullcontext
        except BaseException as e:  # noqa: BLE001 - raised again in the thread that built the service
            loaded.set_exception(e)
            return
        loaded.set_result(None)
        held: list = []  # calls that arrived while a ranking batch was being gathered
        while True:
            job = held.pop(0) if held else self.jobs.get()
            if job[0] == "call":
                self._run(job[2], job[1])
                continue
            batch = [job]
            deadline = time.perf_counter() + self.batch_wait
            while len(batch) < self.recommender.options.batch_users:
                left = deadline - time.perf_counter()
                try:
                    nxt = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
                except queue.Empty:
                    break
                (batch if nxt[0] == "rank" else held).append(nxt)
            self._rank_batch(batch)

    def _run(self, future: Future, fn) -> None:
        try:
            with self.autocast():
                future.set_result(fn())
        except Exception as e:  # noqa: BLE001 - that request fails, the server goes on
            log.exception("a request on the model thread failed")
            future.set_exception(e)

    def _rank_batch(self, batch: list) -> None:
        try:
            k = max(job[3] for job in batch)
            with self.autocast():
                ranked = self.recommender.rank([job[1] for job in batch], [job[2] for job in batch], k).items
            self.batches += 1
            for (_, _, _, want, future), result in zip(batch, ranked):
                future.set_result(result[:want])
        except Exception as e:  # noqa: BLE001 - the requests of this batch fail, the server goes on
            log.exception("ranking a batch of %d requests failed", len(batch))
            for *_, future in batch:
                if not future.done():
                    future.set_exception(e)
