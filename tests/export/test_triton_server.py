"""The Triton backend against a real tritonserver (PyPI's nvidia-pytriton wheel).

The server runs the python-backend twin of the repository ``export.triton`` writes (see
tests/export/tritonserver.py): Triton itself parses the exported config, checks the shapes,
batches requests and answers the classification extension; the model is the shipped
models/catsdogs.onnx in onnxruntime, compared with the same file loaded locally.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.runtime import Classifier, ModelError
from tests.conftest import shifted_photo, synthetic_photo
from tests.export.conftest import SHIPPED_ONNX

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "demo" / "examples"


@pytest.fixture(scope="module")
def local() -> Classifier:
    return Classifier.load(SHIPPED_ONNX)


@pytest.fixture(scope="module")
def remote(triton_server) -> Classifier:
    return Classifier.load(f"{triton_server.url}/catsdogs")  # a URL where a path would go


def photos():
    """Real photos (a cat, a coffee cup) and drawn ones, pets and clearly not pets."""
    return ([EXAMPLES / "chelsea-cat.jpg", EXAMPLES / "coffee-not-a-pet.jpg"]
            + [synthetic_photo(label, i) for i in range(3) for label in ("cat", "dog")]
            + [shifted_photo(kind, 0) for kind in ("noise", "stripes", "triangle")])


def stats(server, name: str) -> tuple[int, int]:
    """(inference_count, execution_count) the server reports for ``name``."""
    import tritonclient.http as http

    model = http.InferenceServerClient(server.url[len("http://"):]).get_inference_statistics(name)["model_stats"][0]
    return int(model["inference_count"]), int(model["execution_count"])


def test_exported_config_loads_and_the_server_reads_it_as_written(triton_server, triton_repos, remote):
    exported, twin = triton_repos
    ours = (exported / "config.pbtxt").read_text()
    theirs = (twin / "catsdogs" / "config.pbtxt").read_text()
    diff = [(a, b) for a, b in zip(ours.splitlines(), theirs.splitlines()) if a != b]
    assert diff == [('platform: "onnxruntime_onnx"', 'backend: "python"')] and len(ours.splitlines()) == len(theirs.splitlines())

    import tritonclient.http as http

    client = http.InferenceServerClient(triton_server.url[len("http://"):])
    config = client.get_model_config("catsdogs")
    assert config["max_batch_size"] == 32 and "dynamic_batching" in config
    assert [(i["name"], i["dims"]) for i in config["input"]] == [("image", [3, 224, 224])]
    outputs = {o["name"]: o for o in config["output"]}
    assert [outputs[n]["dims"] for n in ("logits", "probabilities", "ood_score")] == [[2], [2], [1]]
    assert outputs["ood_score"]["reshape"] == {"shape": []} and outputs["probabilities"]["label_filename"] == "labels.txt"
    # What the client sees on the wire: ood_score as [N, 1]; the backend gives it back as [N].
    wire = {o["name"]: o["shape"] for o in client.get_model_metadata("catsdogs")["outputs"]}
    assert wire == {"logits": [-1, 2], "probabilities": [-1, 2], "ood_score": [-1, 1]}
    # Every metadata_props entry survives the text-format escaping and Triton's parser.
    meta = {p.key: p.value for p in onnx.load(str(SHIPPED_ONNX), load_external_data=False).metadata_props}
    assert {k[len("petlens."):]: v["string_value"] for k, v in config["parameters"].items()} == meta
    assert {k: v for k, v in remote.metadata.items() if k != "server"} == meta


def test_remote_gives_the_local_top_k_and_ood_verdict(remote, local, triton_server):
    assert remote.labels == local.labels == ["cat", "dog"]
    assert (remote.image_size, remote.resize_size) == (local.image_size, local.resize_size) == (224, 256)
    assert remote.ood_threshold == local.ood_threshold is not None
    assert remote.ood_refuse_threshold == local.ood_refuse_threshold is not None  # the middle answer's cut-off
    verdicts = []
    for image in photos():
        got, want = remote.assess(image, top_k=2), local.assess(image, top_k=2)
        assert [n for n, _ in got.top] == [n for n, _ in want.top]
        np.testing.assert_allclose([p for _, p in got.top], [p for _, p in want.top], atol=1e-4)
        assert abs(got.score - want.score) <= 1e-4 and (got.is_pet, got.verdict) == (want.is_pet, want.verdict)
        verdicts.append(got.is_pet)
    assert verdicts[0] is True and verdicts[1] is False  # the real cat is a pet, the coffee is not
    # pathlib collapses "//": the demo/bot may hand over Path(url).
    again = Classifier.load(Path(f"{triton_server.url}/v2/models/catsdogs"))
    assert again.predict(EXAMPLES / "chelsea-cat.jpg") == remote.predict(EXAMPLES / "chelsea-cat.jpg")


def test_batches_of_1_and_32_through_dynamic_batching(remote, local, triton_server):
    batch = np.stack([local.preprocess(synthetic_photo(("cat", "dog")[i % 2], 100 + i)) for i in range(32)])
    want = local.probabilities(batch)
    np.testing.assert_allclose(remote.probabilities(batch), want, atol=1e-4)  # one request of 32
    np.testing.assert_allclose(remote.probabilities(batch[:1]), want[:1], atol=1e-4)  # one of 1
    # Above max_batch_size (32) the backend splits the request; the server would refuse it whole.
    np.testing.assert_allclose(remote.probabilities(np.concatenate([batch, batch[:8]])), np.concatenate([want, want[:8]]), atol=1e-4)

    inferences, executions = stats(triton_server, "catsdogs")
    start = threading.Barrier(32)

    def one(i: int) -> np.ndarray:
        start.wait()
        return remote.probabilities(batch[i : i + 1])[0]

    with ThreadPoolExecutor(32) as pool:  # 32 concurrent batch-1 requests, one client per thread
        got = np.stack(list(pool.map(one, range(32))))
    np.testing.assert_allclose(got, want, atol=1e-4)
    inferences2, executions2 = stats(triton_server, "catsdogs")
    assert inferences2 - inferences == 32
    assert executions2 - executions < 32, "the dynamic batcher merged none of 32 concurrent requests"


def test_unknown_not_ready_and_misshapen_models_are_one_clear_error(triton_server):
    with pytest.raises(ModelError, match=r"has no model 'nope' \(it has: .*catsdogs"):
        Classifier.load(f"{triton_server.url}/nope")
    with pytest.raises(ModelError, match=r"'broken' .* is not ready \(UNAVAILABLE: .*weights are missing"):
        Classifier.load(f"{triton_server.url}/broken")
    with pytest.raises(ModelError, match=r"mismatch .*shape"):
        Classifier.load(f"{triton_server.url}/mismatch")
    with pytest.raises(ModelError, match="not a Triton model URL"):
        Classifier.load(f"{triton_server.url}/a/b/c")


def test_server_stopped_mid_run_is_a_clear_error_not_a_hang(triton_files, triton_repos, tmp_path, local):
    from tests.export.tritonserver import TritonServer

    server = TritonServer(triton_repos[1], triton_files, tmp_path).start(models=["catsdogs"], only=True)
    try:
        clf = Classifier.load(f"{server.url}/catsdogs")
        image = EXAMPLES / "chelsea-cat.jpg"
        assert [n for n, _ in clf.predict(image)] == [n for n, _ in local.predict(image)]
        errors: list[BaseException] = []

        def keep_asking() -> None:
            while True:
                try:
                    clf.predict(image)
                except BaseException as exc:  # what the caller sees is the point of the test
                    errors.append(exc)
                    return

        asker = threading.Thread(target=keep_asking, daemon=True)
        asker.start()
        time.sleep(0.5)
        server.stop()
        stopped = time.monotonic()
        asker.join(timeout=30)
        assert not asker.is_alive(), "the client hung after the server stopped"
        assert time.monotonic() - stopped < 15
    finally:
        server.stop()
    assert len(errors) == 1 and isinstance(errors[0], ModelError), errors
    assert re.search(r"cannot reach Triton at http://127\.0\.0\.1:\d+ .*is tritonserver running\?", str(errors[0]))
    with pytest.raises(ModelError, match="cannot reach Triton"):  # and so is every later call
        clf.predict(image)
    with pytest.raises(ModelError, match="cannot reach Triton"):
        Classifier.load(f"{server.url}/catsdogs")


def test_benchmark_times_both_on_the_same_batches(triton_server, capsys):
    from benchmarks.triton import cli

    assert cli(["--model", str(SHIPPED_ONNX), "--url", f"{triton_server.url}/catsdogs", "--repeat", "3", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["max_abs_diff"] <= 1e-4
    assert all(figures[k] > 0 for k in ("local_b1_ms", "triton_b1_ms", "local_b32_ms", "triton_b32_ms"))
    assert figures["local_b32_ms"] > figures["local_b1_ms"]
