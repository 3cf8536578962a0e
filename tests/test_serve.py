"""`genrec serve` in process (FastAPI's TestClient) on a tiny atomic run: the API answers what recommend
answers, explains on request, batches concurrent requests into shared forwards, and turns every bad
request into a 4xx with a clear message without taking the server down."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from test_explained import headline  # noqa: F401 - the module's trained tiny atomic run

from genrec.config import load_config


@pytest.fixture(scope="module")
def served(headline):  # noqa: F811
    from genrec.serving.app import create_app
    from genrec.serving.service import RecommendationService

    overrides, _ = headline
    adapter = load_config(None, overrides).run.output_dir + "/adapter"
    service = RecommendationService(load_config(None, [*overrides, f"run.checkpoint={adapter}"]), batch_wait_ms=50)
    return service, TestClient(create_app(service, max_request_bytes=2048))


def test_health_and_page(served):
    service, client = served
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 30 and health["identifier"] == "atomic"
    page = client.get("/")
    assert page.status_code == 200 and "<form id=\"ask\"" in page.text
    assert client.get("/api/titles", params={"q": "love"}).json()[0]["title"].lower().count("love") == 1
    assert client.get("/api/users", params={"limit": 3}).json() == service.split.eval_users[:3]


def test_recommend_for_a_user_equals_the_recommenders_own_ranking(served):
    service, client = served
    response = client.post("/recommend", json={"user_id": "3", "k": 5})
    assert response.status_code == 200
    body = response.json()
    split, rec = service.split, service.recommender
    sequence = split.sequences["3"]
    from genrec.data.splits import Example

    example = Example("3", tuple(sequence[-rec.setup.cfg.data.max_history:]), None)
    want = rec.rank([example], [set(sequence)], 5).items[0]
    assert [it["item_id"] for it in body["items"]] == [split.catalog[i].item_id for i, _ in want]
    assert [it["score"] for it in body["items"]] == pytest.approx([round(s, 4) for _, s in want], abs=1e-4)
    assert not {it["item_id"] for it in body["items"]} & {split.catalog[i].item_id for i in sequence}
    assert [h["item_id"] for h in body["history"]] == [split.catalog[i].item_id for i in example.history]
    assert "explanation" not in body["items"][0]


def test_explained_recommendations_carry_checked_claims(served):
    _, client = served
    body = client.post("/recommend", json={"user_id": "3", "k": 5, "explain": True}).json()
    assert len(body["items"]) == 5
    explained = [it for it in body["items"] if it["explanation"]]
    assert len(explained) >= 3
    for it in explained:
        assert it["claims"] and it["claims_true"] == len(it["claims"]) and all(c["true"] for c in it["claims"])
        history_titles = {h["title"] for h in body["history"]}
        assert set(it["cited"]) <= history_titles


def test_a_history_of_titles_and_ids(served):
    service, client = served
    catalog = service.catalog
    history = [catalog[0].text, catalog[3].item_id, catalog[7].text]
    body = client.post("/recommend", json={"history": history, "k": 4}).json()
    assert [h["item_id"] for h in body["history"]] == [catalog[i].item_id for i in (0, 3, 7)]
    assert len(body["items"]) == 4 and not {it["item_id"] for it in body["items"]} & \
        {catalog[i].item_id for i in (0, 3, 7)}
    kept = client.post("/recommend", json={"history": history, "k": 20, "exclude_seen": False}).json()["items"]
    from genrec.data.splits import Example

    want = service.recommender.rank([Example("request", (0, 3, 7), None)], [set()], 20).items[0]
    assert [it["item_id"] for it in kept] == [catalog[i].item_id for i, _ in want]  # history items allowed
    assert len({it["item_id"] for it in kept}) == 20


@pytest.mark.parametrize("body, status, message", [
    ({"user_id": "nobody"}, 404, "unknown user 'nobody'"),
    ({"history": ["Love Blu (1957)", "no such film at all"]}, 422, "2 of 2 history items are not in the catalog"),
    ({"user_id": "3", "history": ["x"]}, 422, "either user_id or history"),
    ({}, 422, "either user_id or history"),
    ({"history": []}, 422, "history is empty"),
    ({"user_id": "3", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"user_id": "3", "k": 500}, 422, "k must be between 1 and 20"),
    ({"user_id": "3", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"user_id": "3", "explain": "maybe"}, 422, "explain: Input should be a valid boolean"),
])
def test_bad_requests_get_a_4xx_with_the_reason(served, body, status, message):
    _, client = served
    response = client.post("/recommend", json=body)
    assert response.status_code == status and message in response.json()["detail"]


def test_unknown_titles_come_back_with_their_close_matches(served):
    _, client = served
    unknown = client.post("/recommend", json={"history": ["Love Blu (1957)"]}).json()["unknown"]
    assert len(unknown) == 1 and unknown[0]["query"] == "Love Blu (1957)"
    assert unknown[0]["close_matches"][0] == "Love Blue (1957)"  # the closest first


def test_malformed_and_oversized_bodies(served):
    _, client = served
    broken = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "JSON" in broken.json()["detail"]
    big = client.post("/recommend", json={"history": ["x" * 100] * 40})
    assert big.status_code == 413 and "2048 bytes" in big.json()["detail"]
    assert client.post("/recommend", json={"user_id": "3"}).status_code == 200  # still up


def test_an_error_inside_one_request_does_not_take_the_server_down(served, monkeypatch):
    service, client = served
    original = service.recommender.rank

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(service.recommender, "rank", broken)
    failing = TestClient(client.app, raise_server_exceptions=False)
    assert failing.post("/recommend", json={"user_id": "3"}).status_code == 500
    monkeypatch.setattr(service.recommender, "rank", original)
    assert client.post("/recommend", json={"user_id": "3"}).status_code == 200


def test_every_forward_pass_runs_on_the_thread_that_loaded_the_model(served, monkeypatch):
    """Rankings and explanations run on the model thread, never on the web server's threads (a second thread
    running the model gets a second OpenMP pool: on 2 cores a top-10 took twice as long)."""
    service, client = served
    threads = []
    rank, explainer = service.recommender.rank, service.explainer

    def on(fn):
        return lambda *args, **kwargs: (threads.append(threading.current_thread()), fn(*args, **kwargs))[1]

    monkeypatch.setattr(service.recommender, "rank", on(rank))
    monkeypatch.setattr(service, "explainer", on(explainer))
    answer = client.post("/recommend", json={"user_id": "3", "k": 3, "explain": True})
    assert answer.status_code == 200 and all(row["explanation"] for row in answer.json()["items"])
    assert len(threads) == 2 and all(t is service.worker for t in threads)
    assert threading.current_thread() is not service.worker


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(served):
    service, client = served
    users = service.split.eval_users[:8]
    alone = {u: client.post("/recommend", json={"user_id": u, "k": 3}).json()["items"] for u in users}
    before = service.batches
    results: dict[str, list] = {}
    barrier = threading.Barrier(len(users))

    def ask(user):
        barrier.wait()
        results[user] = client.post("/recommend", json={"user_id": user, "k": 3}).json()["items"]

    threads = [threading.Thread(target=ask, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.keys() == alone.keys()
    for u in users:
        assert [it["item_id"] for it in results[u]] == [it["item_id"] for it in alone[u]]
    assert service.batches - before < len(users)  # some requests were ranked together
