"""The torch jobs (fool-me, ideal image, Grad-CAM) on a real tritonserver, through TritonJobs.

The server (tests/export/conftest.py, one per session) runs the python-backend job models
exactly as ``export.triton.write_job_models`` writes them, for ``tiny_ood_checkpoint``; each
test compares what comes back with the in-process torch function on the same checkpoint.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from export.backend import ModelError
from export.jobs import JobLimits
from export.triton_jobs import TritonJobs
from tests.conftest import synthetic_photo
from training import load_checkpoint
from training.adversarial import fool
from training.images import ImageError

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EPS = 8 / 255
SIZES = [(160, 120), (120, 168), (128, 128), (176, 120), (96, 160), (144, 144), (160, 112), (112, 150)]


@pytest.fixture(scope="module")
def tiny(tiny_ood_checkpoint):
    return load_checkpoint(tiny_ood_checkpoint)


@pytest.fixture(scope="module")
def jobs(triton_server) -> TritonJobs:
    return TritonJobs(triton_server.url, timeout=240).check()


def _stats(server, name: str) -> tuple[int, int]:
    import tritonclient.http as http

    model = http.InferenceServerClient(server.url[len("http://"):]).get_inference_statistics(name)["model_stats"][0]
    return int(model["inference_count"]), int(model["execution_count"])


def _same_fool(got, want, photo) -> None:
    """What holds between two runs of one attack (pixels may differ by rounding)."""
    assert got.image.size == want.image.size == photo.size
    assert got.source.label == want.source.label and got.source.prob == pytest.approx(want.source.prob, abs=1e-4)
    assert got.source.ood_score == pytest.approx(want.source.ood_score, abs=1e-4)
    assert (got.success, got.result.label, got.result.is_pet) == (want.success, want.result.label, want.result.is_pet)
    diff = np.abs(np.asarray(got.image, dtype=np.int16) - np.asarray(photo.convert("RGB"), dtype=np.int16)).max()
    assert diff <= round(EPS * 255) and got.linf == pytest.approx(diff / 255)


def test_job_configs_load_as_written(triton_server):
    import tritonclient.http as http

    client = http.InferenceServerClient(triton_server.url[len("http://"):])
    config = client.get_model_config("petlens_fool")
    assert config["backend"] == "python" and config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert [(i["name"], i["data_type"], i["dims"], i.get("allow_ragged_batch")) for i in config["input"]] == [
        ("photo", "TYPE_UINT8", ["-1"] if isinstance(config["input"][0]["dims"][0], str) else [-1], True)]
    assert [o["name"] for o in config["output"]] == ["image", "result"]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert JobLimits.from_params({k[len("petlens."):]: v for k, v in params.items()}) == JobLimits()
    assert params["petlens.job"] == "fool" and params["petlens.labels"] == '["cat", "dog"]'
    assert [o["name"] for o in client.get_model_config("petlens_explain")["output"]] == ["overlay", "early", "middle", "late", "result"]


def test_fool_through_triton_is_the_in_process_fool(jobs, tiny):
    model, labels = tiny
    photo = synthetic_photo("dog", 31, size=(180, 140))
    got = jobs.fool(photo, "cat", eps=EPS, steps=10)
    want = fool(model, labels, photo, "cat", eps=EPS, steps=10)
    _same_fool(got, want, photo)
    assert got.success and got.resized_from is None and got.reshared == {}


def test_eight_photos_sent_at_once_share_one_attack_and_equal_single_runs(jobs, tiny, triton_server):
    model, labels = tiny
    photos = [synthetic_photo(("dog", "cat")[i % 2], 70 + i, size=size) for i, size in enumerate(SIZES)]
    targets = [("cat", "dog")[i % 2] for i in range(len(photos))]
    before = _stats(triton_server, "petlens_fool")
    start = threading.Barrier(len(photos))

    def send(i: int):
        start.wait()
        return jobs.fool(photos[i], targets[i], eps=EPS, steps=10)

    with ThreadPoolExecutor(len(photos)) as pool:
        remote = list(pool.map(send, range(len(photos))))
    inferences, executions = (a - b for a, b in zip(_stats(triton_server, "petlens_fool"), before))
    assert inferences == 8 and executions < 8, "the dynamic batcher ran every fool-me request on its own"
    for photo, target, got in zip(photos, targets, remote):
        _same_fool(got, fool(model, labels, photo, target, eps=EPS, steps=10), photo)
    assert sum(r.success for r in remote) >= 6


def test_ideal_through_triton_is_the_in_process_picture(jobs, tiny):
    from training.ideal import ideal_image, label_probability

    model, labels = tiny
    got = jobs.ideal("cat", steps=6, size=48, seed=3)
    want = ideal_image(model, labels, "cat", steps=6, size=48, seed=3)
    assert got.size == want.size == (48, 48) and got.mode == "RGB"
    diff = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(want, dtype=np.int16))
    assert diff.mean() <= 1.0 and diff.max() <= 16  # the same picture, up to float rounding
    assert got.info["prob"] == pytest.approx(label_probability(model, labels, want, "cat"), abs=0.02)
    again, prob = jobs.ideal_judged("cat", steps=6, size=48, seed=3)
    assert np.array_equal(np.asarray(again), np.asarray(got)) and prob == got.info["prob"]  # deterministic for a seed


def test_explain_through_triton_is_the_in_process_explanation(jobs, tiny):
    from training.explain import explain

    model, labels = tiny
    photo = synthetic_photo("dog", 32, size=(200, 150))
    got, want = jobs.explain(photo), explain(model, labels, photo)
    assert (got.label, got.box, got.peak) == (want.label, want.box, want.peak)
    assert got.prob == pytest.approx(want.prob, abs=1e-4)
    assert [k for k, _ in got.top] == [k for k, _ in want.top]
    np.testing.assert_allclose(got.cam, want.cam, atol=1e-3)
    assert got.overlay.size == photo.size and {k: v.size for k, v in got.grids.items()} == {k: v.size for k, v in want.grids.items()}
    assert jobs.explain(photo, label="cat").label == "cat"


def test_a_users_mistakes_are_the_in_process_errors(jobs):
    photo = synthetic_photo("dog", 33, size=(96, 80))
    with pytest.raises(ImageError, match="not an image"):
        jobs.fool(b"this is not a picture at all", "cat")
    with pytest.raises(ModelError, match=r"unknown target 'zebra'; this model knows: cat, dog"):
        jobs.fool(photo, "zebra")
    with pytest.raises(ModelError, match=r"steps must be between 1 and 300 on this server \(petlens.max_steps\)"):
        jobs.fool(photo, "cat", steps=1000)
    with pytest.raises(ModelError, match=r"eps must be between .* \(petlens.eps_min/eps_max\)"):
        jobs.fool(photo, "cat", eps=32 / 255)
    with pytest.raises(ModelError, match=r"size must be between 32 and 512"):
        jobs.ideal("cat", size=4096)
    with pytest.raises(ModelError, match="unknown label 'zebra'"):
        jobs.explain(photo, label="zebra")


def test_a_caller_that_gives_up_stops_its_job_and_the_server_keeps_serving(jobs, triton_server):
    # 300 steps at 512 px take far longer than the caller waits: it gives up after 1.5 s.
    impatient = TritonJobs(triton_server.url, timeout=1.5)
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"did not finish the ideal job within 1.5 s"):
        impatient.ideal("dog", steps=300, size=512)
    assert time.monotonic() - started < 6
    # The same model instance answers the next caller at once: the abandoned job was stopped,
    # not run to its end.
    started = time.monotonic()
    assert jobs.ideal("dog", steps=2, size=32).size == (32, 32)
    assert time.monotonic() - started < 20


@pytest.fixture()
def not_triton():
    """An HTTP server that is not Triton (answers 404 to everything), and a socket that
    accepts connections but never answers; their URLs."""

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    web = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        yield f"http://127.0.0.1:{web.server_port}", f"http://127.0.0.1:{silent.getsockname()[1]}"
    finally:
        web.shutdown()
        silent.close()


def test_down_slow_or_misconfigured_servers_are_one_clear_error(not_triton):
    web, silent = not_triton
    photo = synthetic_photo("dog", 34, size=(96, 80))
    for call in (lambda j: j.fool(photo, "cat"), lambda j: j.ideal("cat"), lambda j: j.explain(photo)):
        started = time.monotonic()
        with pytest.raises(ModelError, match=r"cannot reach Triton at http://127\.0\.0\.1:9 .*is tritonserver running\?"):
            call(TritonJobs("http://127.0.0.1:9", timeout=5))  # nothing listens on the discard port
        with pytest.raises(ModelError, match=r"did not finish the \w+ job within 1 s"):
            call(TritonJobs(silent, timeout=1))  # accepts, never answers
        with pytest.raises(ModelError, match=f"Triton at {web}"):
            call(TritonJobs(web, timeout=5))  # not a Triton server
        assert time.monotonic() - started < 10
    with pytest.raises(ModelError, match="does not serve petlens_fool"):
        TritonJobs(web).check()
    with pytest.raises(ModelError, match="not a Triton server URL"):
        TritonJobs("localhost:8000")
