"""One visitor's heavy jobs never lock others out (demo.lanes), through the real HTTP API.

Two clients are told apart by address; here both connect from 127.0.0.1, through a "proxy"
that names them in ``X-Forwarded-For`` (trusted only from loopback and private peers)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import synthetic_photo

A, B = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "198.51.100.9"}


@pytest.fixture(scope="module")
def slow_demo(demo_models, tiny_checkpoint, tmp_path_factory):
    """The demo with fool-me jobs that take seconds (robust, many steps): a lane that stays busy."""
    from demo.app import build_demo, launch
    from tests.demo.conftest import _free_port, make_service

    service = make_service(demo_models[0], tiny_checkpoint, fool_steps=60)
    app = build_demo(service, jobs_per_client=2, max_queue=3)
    _, url, _ = launch(app, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True, quiet=True)
    folder = tmp_path_factory.mktemp("lanes")
    dog = folder / "dog.png"
    synthetic_photo("dog", 4, size=(640, 480)).save(dog)
    yield url.rstrip("/"), dog
    app.close()


def upload(http: httpx.Client, url: str, path, headers) -> dict:
    with open(path, "rb") as f:
        r = http.post(f"{url}/gradio_api/upload", files={"files": (path.name, f, "image/png")}, headers=headers)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def submit(http, url, api, data, headers) -> httpx.Response:
    return http.post(f"{url}/gradio_api/call/{api}", json={"data": data}, headers=headers)


def result(http, url, api, event_id, headers) -> str:
    """The final SSE event name of a submitted call ("complete" or "error")."""
    with http.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}", headers=headers) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                if event in ("complete", "error"):
                    return event
    return str(event)


def test_a_storm_of_heavy_jobs_is_bounded_per_client_and_classify_keeps_answering(slow_demo):
    url, dog = slow_demo
    with httpx.Client(timeout=120) as http:
        photo_a, photo_b = upload(http, url, dog, A), upload(http, url, dog, B)
        storm = [submit(http, url, "fool_me", [photo_a, "cat", 1, True], A) for _ in range(8)]
        admitted = [r for r in storm if r.status_code == 200]
        refused = [r for r in storm if r.status_code != 200]
        # Two waiting or running per client; the rest refused at once, with the reason.
        assert len(admitted) == 2 and len(refused) == 6, [(r.status_code, r.text[:300]) for r in storm]
        assert all(r.status_code == 422 and "You already have 2 jobs" in r.text for r in refused), refused[0].text

        # Meanwhile another visitor's Classify is answered (its own lane: never "Queue is full").
        waits = []
        for _ in range(5):
            start = time.perf_counter()
            r = submit(http, url, "classify", [photo_b], B)
            assert r.status_code == 200, r.text
            assert result(http, url, "classify", r.json()["event_id"], B) == "complete"
            waits.append(time.perf_counter() - start)
        # ... and their own fool-me is admitted: the line holds 2 of A's, not 70.
        r = submit(http, url, "fool_me", [photo_b, "cat", 4, False], B)
        assert r.status_code == 200, r.text
        assert result(http, url, "fool_me", r.json()["event_id"], B) == "complete"
        for r in admitted:
            result(http, url, "fool_me", r.json()["event_id"], A)
        # With A's jobs finished, A may submit again.
        r = submit(http, url, "fool_me", [photo_a, "cat", 4, False], A)
        assert r.status_code == 200, r.text
        result(http, url, "fool_me", r.json()["event_id"], A)
    assert max(waits) < 30  # not a timing test: a classify that waited for the storm would take minutes
