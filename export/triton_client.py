"""The Triton backend: a model on a Triton Inference Server, through ``tritonclient[http]``.

Decoding and preprocessing stay local (one preprocessing, everywhere, in
:class:`~export.runtime.Classifier`); the float32 batch travels to the server as a binary
tensor, and the server's dynamic batcher merges concurrent requests. Point the bot or the
demo at a server by giving a URL where a model path goes::

    clf = Classifier.load("http://localhost:8000/catsdogs")   # model "catsdogs" in the repo

What comes from where (checked against a real tritonserver, see tests/export/test_triton_server.py):
labels from the repository's ``labels.txt`` through the classification extension (model
metadata has no place for them); the export's metadata (image size, OOD threshold, ...) from
the ``petlens.*`` parameters that :func:`export.triton.config_pbtxt` writes into the model
config; output shapes from the config, undoing its ``reshape`` so every output comes back as
the ONNX model returns it (``ood_score`` is ``[N, 1]`` on the wire, ``[N]`` in the model).

Needs the optional extra: ``pip install 'petlens[triton]'``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence

import numpy as np

from .backend import ModelError

TIMEOUT_S = 10.0  # per request: a server that stops answering fails the call, never hangs it
PARAMETER_PREFIX = "petlens."  # model-config parameters that carry the export's metadata


def _http():
    try:
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise ModelError("serving from a Triton URL needs tritonclient: pip install 'petlens[triton]'") from exc
    return http, InferenceServerException


class TritonBackend:
    """A model on a Triton server (see :class:`export.backend.Backend`). Use :meth:`connect`."""

    def __init__(self, url: str, name: str, *, timeout: float = TIMEOUT_S):
        m = re.fullmatch(r"(https?)://([^/]+)", url)
        if not m:
            raise ModelError(f"{url!r} is not a Triton server URL; expected http://host:8000")
        self.url, self.name, self.timeout = url, name, timeout
        self._ssl, self._host = m.group(1) == "https", m.group(2)
        self._local = threading.local()  # tritonclient's HTTP client is not thread-safe: one per thread
        self.providers = [f"triton:{url}/v2/models/{name}"]
        self.labels: list[str] = []
        self.metadata: dict[str, str] = {}
        self.input_shape: tuple[int, int, int] = (3, 0, 0)
        self.outputs: tuple[str, ...] = ()
        self.input_name = ""
        self.max_batch_size = 0
        self._shapes: dict[str, tuple[int, ...]] = {}  # per-image output shape, as the model returns it

    @classmethod
    def connect(cls, url: str, *, timeout: float = TIMEOUT_S) -> TritonBackend:
        """``url``: ``http(s)://host:port/<model>`` or ``.../v2/models/<model>``. Reads the
        model's metadata, config and labels; raises :class:`ModelError` when the server is
        down, the model is unknown or not ready, or it is not shaped like a petlens export."""
        m = re.fullmatch(r"(https?://[^/]+)(?:/v2/models)?/([A-Za-z0-9_.-]+)/?", url)
        if not m:
            raise ModelError(f"{url!r} is not a Triton model URL; expected http://host:8000/<model name>")
        backend = cls(*m.groups(), timeout=timeout)
        backend._describe()
        return backend

    # --- talking to the server ---------------------------------------------------------

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            http, _ = _http()
            client = http.InferenceServerClient(
                self._host, ssl=self._ssl, connection_timeout=self.timeout, network_timeout=self.timeout
            )
            self._local.client = client
        return client

    def _call(self, what: str, fn, *args, **kwargs):
        """``fn(*args)``, with every failure turned into one :class:`ModelError`."""
        _, InferenceServerException = _http()
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise ModelError(f"Triton at {self.url} refused {what} for model {self.name!r}: {exc.message()}") from exc
        except Exception as exc:  # geventhttpclient: refused, reset, timed out, closed mid-reply
            self._local.client = None  # its connection is broken; the next call opens a new one
            reason = str(exc) or type(exc).__name__
            raise ModelError(f"cannot reach Triton at {self.url} ({reason}) for {what}; is tritonserver running?") from exc

    def _describe(self) -> None:
        client = self._client()
        self._call("a liveness check", client.is_server_live)
        if not self._call("a readiness check", client.is_model_ready, self.name):
            raise ModelError(self._not_ready())
        meta = self._call("model metadata", client.get_model_metadata, self.name)
        config = self._call("the model config", client.get_model_config, self.name)
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self._read_input(meta)
        self._read_outputs(meta, config)
        params = config.get("parameters") or {}
        self.metadata = {
            key[len(PARAMETER_PREFIX):]: str(value.get("string_value", ""))
            for key, value in params.items() if key.startswith(PARAMETER_PREFIX)
        }
        self.metadata["server"] = self.url
        self.labels = self._fetch_labels()
        exported = self.metadata.get("labels")
        if exported and json.loads(exported) != self.labels:
            raise ModelError(f"{self.name} on {self.url}: labels.txt says {self.labels} but the exported model says {exported}")

    def _not_ready(self) -> str:
        index = self._call("the repository index", self._client().get_model_repository_index)
        entries = [e for e in index if e.get("name") == self.name]
        if not entries:
            names = ", ".join(sorted({e.get("name", "?") for e in index})) or "none"
            return f"Triton at {self.url} has no model {self.name!r} (it has: {names})"
        entry = entries[-1]
        state, reason = entry.get("state", "not loaded"), entry.get("reason", "")
        return f"model {self.name!r} on Triton at {self.url} is not ready ({state}{': ' + reason if reason else ''})"

    def _read_input(self, meta: dict) -> None:
        inputs = meta.get("inputs", [])
        shape = inputs[0].get("shape", []) if len(inputs) == 1 else []
        ok = (
            len(inputs) == 1 and inputs[0].get("datatype") == "FP32" and len(shape) == 4 and self.max_batch_size > 0
            and shape[1] == 3 and shape[2] == shape[3] and shape[2] > 0
        )
        if not ok:
            raise ModelError(f"{self.name} on {self.url} takes {[(i.get('datatype'), i.get('shape')) for i in inputs]}, "
                             "not one FP32 [N,3,S,S] image batch with dynamic N (max_batch_size > 0)")
        self.input_name = inputs[0]["name"]
        self.input_shape = (3, int(shape[2]), int(shape[3]))

    def _read_outputs(self, meta: dict, config: dict) -> None:
        self.outputs = tuple(o["name"] for o in meta.get("outputs", []))
        for out in config.get("output", []):
            reshape = out.get("reshape")
            dims = reshape.get("shape", []) if reshape is not None else out.get("dims", [])
            self._shapes[out["name"]] = tuple(int(d) for d in dims)
        classes = "probabilities" if "probabilities" in self.outputs else (self.outputs or ("?",))[0]
        if len(self._shapes.get(classes, ())) != 1 or self._shapes[classes][0] < 1:
            raise ModelError(f"{self.name} on {self.url} has outputs {self._shapes}, not class scores [N, C]")
        if "ood_score" in self.outputs and self._shapes.get("ood_score") != ():
            raise ModelError(f"{self.name} on {self.url}: ood_score is {self._shapes.get('ood_score')} per image, not one number")
        self._classes = classes

    def _fetch_labels(self) -> list[str]:
        """Index -> label from the classification extension (top-C of one blank image)."""
        http, _ = _http()
        n = self._shapes[self._classes][0]
        inp = http.InferInput(self.input_name, [1, *self.input_shape], "FP32")
        inp.set_data_from_numpy(np.zeros((1, *self.input_shape), np.float32))
        out = http.InferRequestedOutput(self._classes, class_count=n)
        result = self._call("the labels (classification extension)", self._client().infer, self.name, [inp], outputs=[out])
        entries = result.as_numpy(self._classes)
        if entries is None or entries.shape != (1, n):
            # The server passes on whatever the model returns (the python backend does not
            # hold it to the config), so a model/config disagreement shows up here.
            raise ModelError(f"{self.name} on {self.url} answered {self._classes} with shape "
                             f"{None if entries is None else list(entries.shape)}, but its config says [1, {n}]")
        labels = [f"class_{i}" for i in range(n)]
        for entry in entries.reshape(-1):  # b"<value>:<index>[:<label>]"
            parts = (entry.decode() if isinstance(entry, bytes) else str(entry)).split(":", 2)
            if len(parts) == 3:
                labels[int(parts[1])] = parts[2]
        return labels

    # --- the Backend protocol ----------------------------------------------------------

    def run(self, names: Sequence[str], batch: np.ndarray) -> list[np.ndarray]:
        """One request per ``max_batch_size`` images; each output reshaped to the model's own
        shape (``[N, C]``, ``[N]``) after checking the server sent exactly that many values."""
        unknown = [n for n in names if n not in self.outputs]
        if unknown:
            raise ModelError(f"{self.name} on {self.url} has no output {', '.join(unknown)} (it has: {', '.join(self.outputs)})")
        parts = [self._run_chunk(names, batch[i : i + self.max_batch_size]) for i in range(0, len(batch), self.max_batch_size)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]

    def _run_chunk(self, names: Sequence[str], chunk: np.ndarray) -> list[np.ndarray]:
        http, _ = _http()
        inp = http.InferInput(self.input_name, list(chunk.shape), "FP32")
        inp.set_data_from_numpy(chunk, binary_data=True)
        outputs = [http.InferRequestedOutput(n, binary_data=True) for n in names]
        result = self._call("an inference", self._client().infer, self.name, [inp], outputs=outputs)
        arrays = []
        for name in names:
            got = result.as_numpy(name)
            want = (len(chunk), *self._shapes[name])
            if got is None or got.size != int(np.prod(want)):
                raise ModelError(f"{self.name} on {self.url} answered {name} with shape "
                                 f"{None if got is None else list(got.shape)}, expected {list(want)}")
            arrays.append(got.astype(np.float32, copy=False).reshape(want))
        return arrays

    def __repr__(self) -> str:
        return f"TritonBackend({self.url}/v2/models/{self.name}, labels={self.labels})"
