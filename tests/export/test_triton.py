"""Triton model repository: layout, config contents, and a model that batches."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.runtime import Classifier, ModelError
from export.triton import write_triton_repo
from tests.conftest import LABELS


@pytest.fixture(scope="module")
def repo(tiny_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    folder = write_triton_repo(tiny_onnx, root, name="pets", max_batch_size=16)
    return root, folder


def test_layout(repo, tiny_onnx):
    root, folder = repo
    assert folder == root / "pets"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["pets/1/model.onnx", "pets/config.pbtxt", "pets/labels.txt"]
    assert (folder / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == LABELS


def test_config_contents(repo):
    text = (repo[1] / "config.pbtxt").read_text()
    assert re.search(r'^name: "pets"$', text, re.M)
    assert re.search(r'^platform: "onnxruntime_onnx"$', text, re.M)
    assert re.search(r"^max_batch_size: 16$", text, re.M)
    # Dims leave out the batch axis, which Triton adds from max_batch_size.
    assert re.search(r'name: "image"\s+data_type: TYPE_FP32\s+dims: \[ 3, 224, 224 \]', text)
    assert re.search(r'name: "probabilities"\s+data_type: TYPE_FP32\s+dims: \[ 2 \]\s+label_filename: "labels.txt"', text)
    assert re.search(r'name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 2 \]', text)
    assert re.search(r"dynamic_batching \{\s+max_queue_delay_microseconds: \d+\s+\}", text)
    assert text.count("{") == text.count("}") and text.count("[") == text.count("]")


def test_config_parses_with_tritons_own_schema(repo):
    """When tritonclient is installed, its ModelConfig protobuf must accept the file."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    cfg = text_format.Parse((repo[1] / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert list(cfg.input[0].dims) == [3, 224, 224]


def test_repository_model_runs_with_batch_above_one(repo, tiny_onnx, val_photos):
    model = repo[1] / "1" / "model.onnx"
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    clf = Classifier.load(tiny_onnx)
    batch = np.stack([clf.preprocess(p) for p, _ in val_photos[:5]])
    (probs,) = sess.run(["probabilities"], {"image": batch})
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs, clf.probabilities(batch), atol=1e-6)


def test_kind_and_bad_arguments(tiny_onnx, tmp_path):
    folder = write_triton_repo(tiny_onnx, tmp_path, kind="gpu")
    assert folder.name == "tiny" and "kind: KIND_GPU" in (folder / "config.pbtxt").read_text()
    for kwargs, phrase in [({"name": "../evil"}, "letters, digits"), ({"max_batch_size": 0}, "max_batch_size"), ({"kind": "tpu"}, "instance kind")]:
        with pytest.raises(ValueError, match=phrase):
            write_triton_repo(tiny_onnx, tmp_path, **kwargs)


# --- the client, against a stand-in server ------------------------------------------------
# No tritonserver can run in CI, so a small HTTP server speaks the subset of the KServe v2
# protocol the client uses (metadata, binary tensors, classification), running the
# repository's own model.onnx and labels.txt in onnxruntime.


class _StandIn(BaseHTTPRequestHandler):
    repo: Path

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _model(self, name):
        folder = self.repo / name
        if not (folder / "1" / "model.onnx").is_file():
            return None, None
        return ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]), folder

    def _reply(self, code, obj, binary=b""):
        head = json.dumps(obj).encode()
        self.send_response(code)
        if binary:
            self.send_header("Inference-Header-Content-Length", str(len(head)))
        self.send_header("Content-Length", str(len(head) + len(binary)))
        self.end_headers()
        self.wfile.write(head + binary)

    def do_GET(self):
        sess, _ = self._model(self.path.rsplit("/", 1)[-1])
        if sess is None:
            return self._reply(400, {"error": "Request for unknown model"})
        spec = lambda v: {"name": v.name, "datatype": "FP32", "shape": [-1 if isinstance(d, str) else d for d in v.shape]}
        self._reply(200, {"name": "m", "platform": "onnxruntime_onnx",
                          "inputs": [spec(i) for i in sess.get_inputs()], "outputs": [spec(o) for o in sess.get_outputs()]})

    def do_POST(self):
        sess, folder = self._model(self.path.split("/")[3])
        body = self.rfile.read(int(self.headers["Content-Length"]))
        split = int(self.headers["Inference-Header-Content-Length"])
        req, binary = json.loads(body[:split]), body[split:]
        inp = req["inputs"][0]
        x = np.frombuffer(binary[: inp["parameters"]["binary_data_size"]], "<f4").reshape(inp["shape"])
        out_req = req["outputs"][0]
        (y,) = sess.run([out_req["name"]], {inp["name"]: x})
        k = out_req["parameters"].get("classification")
        if k:
            labels = (folder / "labels.txt").read_text().splitlines()
            data = [f"{row[i]:f}:{i}:{labels[i]}" for row in y for i in np.argsort(-row)[:k]]
            return self._reply(200, {"outputs": [{"name": out_req["name"], "datatype": "BYTES", "shape": [len(y), k], "data": data}]})
        raw = y.astype("<f4").tobytes()
        self._reply(200, {"outputs": [{"name": out_req["name"], "datatype": "FP32", "shape": list(y.shape),
                                       "parameters": {"binary_data_size": len(raw)}}]}, raw)


@pytest.fixture(scope="module")
def server(repo):
    handler = type("Handler", (_StandIn,), {"repo": repo[0]})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_client_predicts_like_the_local_model(server, tiny_onnx, val_photos):
    remote = Classifier.load(f"{server}/pets")  # a URL where a path would go
    local = Classifier.load(tiny_onnx)
    assert remote.labels == LABELS and remote.image_size == 224
    paths = [p for p, _ in val_photos[:6]]
    for got, want in zip(remote.predict_batch(paths), local.predict_batch(paths)):
        assert [n for n, _ in got] == [n for n, _ in want]
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-6)
    # pathlib collapses "//": the demo/bot may hand over Path(url).
    assert Classifier.load(Path(f"{server}/v2/models/pets")).predict(paths[0]) == remote.predict(paths[0])


def test_client_errors_are_readable(server):
    with pytest.raises(ModelError, match="unknown model"):
        Classifier.load(f"{server}/nope")
    with pytest.raises(ModelError, match="cannot reach Triton"):
        Classifier.load("http://127.0.0.1:9/pets")  # discard port: nothing listens
    with pytest.raises(ModelError, match="not a Triton model URL"):
        Classifier.load("http://127.0.0.1:8000/a/b/c")
