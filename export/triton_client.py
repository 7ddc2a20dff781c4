"""A :class:`~export.runtime.Classifier` whose model runs on a Triton Inference Server.

Same interface (``labels``, ``predict``, ``predict_batch``, ``probabilities``): decoding and
preprocessing stay local (one preprocessing, everywhere), the float32 batch travels to the
server over the KServe v2 HTTP protocol with Triton's binary tensor extension, and the
dynamic batcher there merges concurrent requests. Standard library only; no tritonclient.

Point the bot or demo at a server by giving a URL where a model path goes::

    clf = Classifier.load("http://localhost:8000/catsdogs")   # model "catsdogs" in the repo

Labels come from the server's classification extension (the repository's labels.txt).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import numpy as np

from .runtime import Classifier, ModelError

TIMEOUT_S = 10.0


class TritonError(RuntimeError):
    """The server could not be reached or refused a request; the message says which."""


class TritonClassifier(Classifier):
    """Use :meth:`connect` (or ``Classifier.load(url)``)."""

    def __init__(self, base: str, name: str, metadata: dict, timeout: float = TIMEOUT_S):
        self.base, self.name, self.timeout = base, name, timeout
        self.path = None
        self.session = None
        self.providers = [f"triton:{base}/v2/models/{name}"]
        self.model_metadata = metadata
        inp = metadata["inputs"][0]
        self.input_name = inp["name"]
        if inp.get("datatype") != "FP32" or list(inp["shape"][1:2]) != [3] or inp["shape"][2] != inp["shape"][3]:
            raise ModelError(f"{name} on {base} takes {inp.get('datatype')} {inp['shape']}, not FP32 [N,3,S,S] images")
        outputs = [o["name"] for o in metadata["outputs"]]
        self._output = "probabilities" if "probabilities" in outputs else outputs[0]
        self._apply_softmax = self._output != "probabilities"
        self._n_classes = int(next(o for o in metadata["outputs"] if o["name"] == self._output)["shape"][-1])
        self.image_size = int(inp["shape"][-1])
        self.resize_size = round(self.image_size * 256 / 224)
        self._on_cuda = False
        self.labels = self._fetch_labels()
        self.metadata = {"labels": json.dumps(self.labels), "image_size": str(self.image_size),
                         "platform": str(metadata.get("platform", "")), "server": base}

    @classmethod
    def connect(cls, url: str, *, timeout: float = TIMEOUT_S) -> "TritonClassifier":
        """``url``: ``http(s)://host:port/<model>`` or ``.../v2/models/<model>``."""
        m = re.fullmatch(r"(https?://[^/]+)(?:/v2/models)?/([A-Za-z0-9_.-]+)/?", url)
        if not m:
            raise ModelError(f"{url!r} is not a Triton model URL; expected http://host:8000/<model name>")
        base, name = m.groups()
        try:
            metadata = _request(f"{base}/v2/models/{name}", timeout=timeout)[0]
        except TritonError as exc:
            raise ModelError(str(exc)) from exc
        return cls(base, name, metadata, timeout)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        data = np.ascontiguousarray(batch, dtype="<f4").tobytes()
        header = {
            "inputs": [{"name": self.input_name, "shape": list(batch.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": self._output, "parameters": {"binary_data": True}}],
        }
        reply, binary = _request(f"{self.base}/v2/models/{self.name}/infer", header, data, timeout=self.timeout)
        out = reply["outputs"][0]
        size = out.get("parameters", {}).get("binary_data_size")
        values = np.frombuffer(binary[:size], dtype="<f4") if size is not None else np.asarray(out["data"], np.float32)
        return values.reshape(out["shape"]).astype(np.float32, copy=False)

    def _fetch_labels(self) -> list[str]:
        """Index -> label from the classification extension (top-C of one dummy image)."""
        c = self._n_classes
        zeros = np.zeros((1, 3, self.image_size, self.image_size), "<f4").tobytes()
        header = {
            "inputs": [{"name": self.input_name, "shape": [1, 3, self.image_size, self.image_size], "datatype": "FP32",
                        "parameters": {"binary_data_size": len(zeros)}}],
            "outputs": [{"name": self._output, "parameters": {"classification": c, "binary_data": False}}],
        }
        try:
            reply, _ = _request(f"{self.base}/v2/models/{self.name}/infer", header, zeros, timeout=self.timeout)
            labels = [f"class_{i}" for i in range(c)]
            for entry in reply["outputs"][0]["data"]:  # "<value>:<index>[:<label>]"
                parts = str(entry).split(":", 2)
                if len(parts) == 3:
                    labels[int(parts[1])] = parts[2]
            return labels
        except (TritonError, KeyError, IndexError, ValueError) as exc:
            raise ModelError(f"could not read labels of {self.name} from {self.base}: {exc}") from exc

    def __repr__(self) -> str:
        return f"TritonClassifier({self.base}/v2/models/{self.name}, labels={self.labels})"


def _request(url: str, header: dict | None = None, binary: bytes = b"", *, timeout: float) -> tuple[dict, bytes]:
    """GET (no header) or POST a v2 request; returns (JSON part, binary part) of the reply."""
    if header is None:
        req = urllib.request.Request(url)
    else:
        head = json.dumps(header).encode()
        req = urllib.request.Request(url, data=head + binary, method="POST", headers={
            "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            split = resp.headers.get("Inference-Header-Content-Length")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        raise TritonError(f"Triton at {url} answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TritonError(f"cannot reach Triton at {url} ({reason}); is tritonserver running?") from exc
    split = int(split) if split else len(body)
    return json.loads(body[:split]), body[split:]
