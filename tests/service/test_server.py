"""``--server URL``: the service, the demo and the bot with classify and the heavy jobs on a real
tritonserver, against the same service in this process.

The session's server (tests/conftest.py) serves the shipped classifier as ``catsdogs`` and the
job models for ``tiny_ood_checkpoint``; the in-process twin of that service is the shipped ONNX
file with the same checkpoint, so both must give the same answers.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHIPPED_ONNX, synthetic_photo

pytestmark = [pytest.mark.triton, pytest.mark.slow]

STEPS = dict(fool_steps=12, ideal_steps=6, ideal_size=48)


def _count(server, model: str) -> int:
    import tritonclient.http as http

    client = http.InferenceServerClient(server.url[len("http://"):])
    return int(client.get_inference_statistics(model)["model_stats"][0]["inference_count"])


@pytest.fixture(scope="module")
def both(triton_server, tiny_ood_checkpoint):
    """``(on the server, in this process)``: the same service twice."""
    from export.runtime import Classifier
    from service import Service
    from service.jobs import LocalJobs

    remote = Service.connect(triton_server.url, timeout=240, **STEPS)
    local = Service(Classifier.load(SHIPPED_ONNX), LocalJobs(tiny_ood_checkpoint), **STEPS)
    return remote, local


def _words(text: str) -> str:
    """The answer's sentences without its numbers (timings; a probability or a step count may
    round differently when one pixel does)."""
    return re.sub(r"\d+(\.\d+)?", "N", text)


def test_the_service_on_the_server_answers_as_in_process(both, triton_server):
    remote, local = both
    photo = local.photo(synthetic_photo("dog", 41, size=(200, 150)), name="rex.png", heavy=True)
    a, b = remote.classify(photo), local.classify(photo)
    assert (a.label, a.verdict, a.message()) == (b.label, b.verdict, b.message())
    assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-4)

    before = _count(triton_server, "petlens_fool")
    got, want = remote.fool(photo, None, 8), local.fool(photo, None, 8)  # the other label: always work to do
    assert not got.already and got.target == want.target
    assert _count(triton_server, "petlens_fool") == before + 1  # the job ran there, not here
    assert (got.success, got.result.label, got.result.verdict) == (want.success, want.result.label, want.result.verdict)
    assert _words(got.summary()) == _words(want.summary())
    change = np.abs(np.asarray(got.image, np.int16) - np.asarray(photo.image, np.int16)).max()
    assert change <= 8 and got.image.size == photo.image.size

    got, want = remote.ideal("cat", seed=3), local.ideal("cat", seed=3)
    assert got.prob == pytest.approx(want.prob, abs=1e-3)
    assert np.abs(np.asarray(got.image, np.int16) - np.asarray(want.image, np.int16)).max() <= 2

    got, want = remote.explain(photo), local.explain(photo)
    assert (got.label, got.source.verdict) == (want.label, want.source.verdict)
    assert got.prob == pytest.approx(want.prob, abs=1e-3)


def test_a_server_that_is_down_or_silent_is_one_sentence_within_the_timeout(tiny_ood_checkpoint):
    """Down: nothing listens. Silent: it accepts and never answers. Neither hangs, neither is
    a traceback: the user gets the service's sentence, the cause stays for the operator."""
    from export.runtime import Classifier
    from service import Service, Unavailable
    from service.jobs import ConfigError, RemoteJobs

    with pytest.raises(ConfigError, match=r"--server http://127\.0\.0\.1:9: cannot reach Triton"):
        Service.connect("http://127.0.0.1:9", timeout=2)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        photo_source = synthetic_photo("dog", 42, size=(96, 80))
        for url in ("http://127.0.0.1:9", f"http://127.0.0.1:{silent.getsockname()[1]}"):
            service = Service(Classifier.load(SHIPPED_ONNX), RemoteJobs(url, timeout=1), **STEPS)
            photo = service.photo(photo_source, heavy=True)
            for what, method, args in (("Fool me", service.fool, (photo, None)), ("The ideal image", service.ideal, ("cat",)),
                                       ("Explain", service.explain, (photo,))):
                started = time.monotonic()
                with pytest.raises(Unavailable) as refused:
                    method(*args)
                assert time.monotonic() - started < 8
                assert str(refused.value).startswith(f"{what} cannot run right now") and "Triton" not in str(refused.value)
    finally:
        silent.close()


def test_the_bot_with_server_gives_the_in_process_reply(triton_server, tiny_ood_checkpoint, tmp_path):
    photo = tmp_path / "rex.png"
    synthetic_photo("dog", 43, size=(160, 120)).save(photo)

    def console(*flags: str) -> dict:
        out = tmp_path / str(len(flags))
        proc = subprocess.run([sys.executable, "-m", "bot.console", "fool-me", "--image", str(photo),
                               "--strength", "strong", "--fool-steps", "12", "--out", str(out), *flags],
                              capture_output=True, text=True, timeout=240)
        assert "Traceback" not in proc.stderr, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    before = _count(triton_server, "petlens_fool")
    remote = console("--server", triton_server.url)
    local = console("--model", str(SHIPPED_ONNX), "--checkpoint", str(tiny_ood_checkpoint))
    assert _count(triton_server, "petlens_fool") == before + 1
    assert remote["ok"] == local["ok"] and _words(remote["text"]) == _words(local["text"])
    assert len(remote["files"]) == len(local["files"]) == 1 and Path(remote["files"][0]).is_file()
    down = console("--server", "http://127.0.0.1:9")  # a bot cannot start without its server
    assert down["ok"] is False and "cannot reach Triton at http://127.0.0.1:9" in down["text"]


def test_the_demo_with_server_sends_its_jobs_there(triton_server, tmp_path):
    import httpx

    from demo.app import launch, load_demo
    from tests.demo.conftest import _free_port

    app = load_demo(server=triton_server.url, job_timeout=240, fool_steps=12, ideal_steps=6, ideal_size=48)
    _, url, _ = launch(app, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True, quiet=True)
    url = url.rstrip("/")
    photo = tmp_path / "rex.png"
    synthetic_photo("dog", 44, size=(160, 120)).save(photo)
    try:
        with httpx.Client(timeout=240) as http:
            with photo.open("rb") as f:
                path = http.post(f"{url}/gradio_api/upload", files={"files": ("rex.png", f, "image/png")}).json()[0]
            upload = {"path": path, "orig_name": "rex.png", "meta": {"_type": "gradio.FileData"}}
            before = {m: _count(triton_server, m) for m in ("catsdogs", "petlens_fool")}
            event_id = http.post(f"{url}/gradio_api/call/fool_me", json={"data": [upload, "the other one", 8, False]}).json()["event_id"]
            with http.stream("GET", f"{url}/gradio_api/call/fool_me/{event_id}") as stream:
                lines = [line for line in stream.iter_lines() if line.startswith(("event:", "data:"))]
        assert lines[-2] == "event: complete", lines[-2:]
        summary = json.loads(lines[-1].split(":", 1)[1])[3]
        assert summary.startswith("Before: **") and "No colour value moved by more than" in summary, summary
        assert _count(triton_server, "petlens_fool") == before["petlens_fool"] + 1
        assert _count(triton_server, "catsdogs") >= before["catsdogs"] + 2  # the photo, and the result judged
    finally:
        app.close()
