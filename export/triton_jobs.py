"""The torch jobs on a Triton server: fool-me, ideal image and Grad-CAM, as the in-process
functions return them.

:class:`TritonJobs` is a drop-in for :func:`training.adversarial.fool`,
:func:`training.ideal.ideal_image` and :func:`training.explain.explain` when the work should
run on a Triton pool (the models ``petlens_fool``, ``petlens_ideal``, ``petlens_explain`` that
``python -m export --triton-repo DIR`` writes; see export/jobs.py and docs/deploy-triton.md)::

    jobs = TritonJobs("http://localhost:8000")
    result = jobs.fool("rex.jpg", "cat", eps=2 / 255)      # a training.adversarial.FoolResult
    picture = jobs.ideal("cat", steps=128)                   # a PIL image; picture.info["prob"]
    why = jobs.explain("rex.jpg")                            # a training.explain.Explanation

Every call has a timeout (the server is told too, and stops the job when its caller has given
up); a server that is down, slow, or lacks the models raises one :class:`ModelError` (a
``ValueError``) with a readable message, never hangs. A photo the server cannot use raises
:class:`training.images.ImageError`, as in-process.

Needs the optional extra: ``pip install 'petlens[triton]'``.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .backend import ModelError
from .jobs import ERROR_PREFIX, INPUTS, MODEL_NAMES, OUTPUTS, explanation, fool_result, ideal_result

TIMEOUT_S = 120.0  # a whole job: fool-me on a big photo takes seconds to a minute on a CPU
CONNECT_TIMEOUT_S = 5.0


def _http():
    try:
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException
    except ImportError as exc:
        raise ModelError("the Triton jobs need tritonclient: pip install 'petlens[triton]'") from exc
    return http, InferenceServerException


def _photo_bytes(image) -> bytes:
    """What travels: a file's bytes as they are (the server decodes them like load_image does
    here), a PIL image as a lossless PNG."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return buf.getvalue()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    raise TypeError(f"expected a path, bytes or a PIL image, got {type(image).__name__}")


class TritonJobs:
    """The torch jobs on the Triton server at ``url`` (``http(s)://host:port``). Thread-safe:
    each call opens its own connection. ``timeout``: seconds a call may take in all."""

    def __init__(self, url: str = "http://localhost:8000", *, timeout: float = TIMEOUT_S,
                 connect_timeout: float = CONNECT_TIMEOUT_S):
        m = re.fullmatch(r"(https?)://([^/]+)/?", str(url))
        if not m:
            raise ModelError(f"{url!r} is not a Triton server URL; expected http://host:8000")
        if not timeout > 0:
            raise ModelError(f"timeout must be positive, got {timeout}")
        self.url = url.rstrip("/")
        self._ssl, self._host = m.group(1) == "https", m.group(2)
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)

    # --- the jobs: same arguments and return types as the in-process functions --------------

    def fool(self, image, target: str, *, eps: float = 2 / 255, steps: int | None = None, robust: bool = False,
             seed: int = 0, timeout: float | None = None):
        """:func:`training.adversarial.fool` on the server -> a ``FoolResult``."""
        options = {"target": target, "eps": float(eps), "steps": steps, "robust": bool(robust), "seed": int(seed)}
        return fool_result(self._infer("fool", _photo_bytes(image), options, timeout))

    def ideal(self, label: str, *, steps: int | None = None, size: int | None = None, seed: int = 0,
              timeout: float | None = None) -> Image.Image:
        """:func:`training.ideal.ideal_image` on the server -> the PIL image; the server's
        judgement of it (the model's probability for ``label``) is in ``image.info["prob"]``."""
        image, prob = self.ideal_judged(label, steps=steps, size=size, seed=seed, timeout=timeout)
        image.info["prob"] = prob
        return image

    def ideal_judged(self, label: str, *, steps: int | None = None, size: int | None = None, seed: int = 0,
                     timeout: float | None = None) -> tuple[Image.Image, float]:
        """``(image, probability the model gives label on the 8-bit image)``."""
        options = {"steps": steps, "size": size, "seed": int(seed)}
        image, record = ideal_result(self._infer("ideal", label.encode("utf-8"), options, timeout))
        return image, float(record["prob"])

    def explain(self, image, *, label: str | None = None, timeout: float | None = None):
        """:func:`training.explain.explain` on the server -> an ``Explanation``."""
        return explanation(self._infer("explain", _photo_bytes(image), {"label": label}, timeout))

    def check(self, jobs: tuple[str, ...] = ("fool", "ideal", "explain")) -> TritonJobs:
        """Raise :class:`ModelError` unless the server is up and serves these jobs' models."""
        client = self._client(self.connect_timeout)
        try:
            missing = [MODEL_NAMES[job] for job in jobs
                       if not self._call("a readiness check", client.is_model_ready, MODEL_NAMES[job])]
        finally:
            client.close()
        if missing:
            raise ModelError(f"Triton at {self.url} does not serve {', '.join(missing)}; write the repository with "
                             "python -m export --checkpoint C --triton-repo DIR and serve DIR")
        return self

    # --- talking to the server -------------------------------------------------------------

    def _client(self, timeout: float):
        http, _ = _http()
        return http.InferenceServerClient(self._host, ssl=self._ssl, connection_timeout=min(timeout, self.connect_timeout),
                                          network_timeout=timeout)

    def _call(self, what: str, fn, *args, wait: float | None = None, **kwargs):
        """``fn(*args)``, with every failure turned into one readable exception."""
        _, InferenceServerException = _http()
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise self._refused(what, exc.message() or str(exc)) from exc
        except TimeoutError as exc:
            raise ModelError(f"Triton at {self.url} did not finish {what} within {wait or self.connect_timeout:g} s "
                             "(gave up; the server stops the job); it may be overloaded, try again later") from exc
        except Exception as exc:  # geventhttpclient / socket: refused, reset, closed mid-reply
            reason = str(exc) or type(exc).__name__
            raise ModelError(f"cannot reach Triton at {self.url} ({reason}) for {what}; is tritonserver running?") from exc

    def _refused(self, what: str, message: str) -> ValueError:
        from training.images import ImageError

        m = re.search(re.escape(ERROR_PREFIX) + r"(\w+): (.*)", message, flags=re.S)
        if m and m.group(1) == "image":
            return ImageError(m.group(2))
        if m:
            return ModelError(m.group(2))
        if "unknown model" in message or "is not found" in message:
            return ModelError(f"Triton at {self.url} has no model for {what} ({message}); write the repository with "
                              "python -m export --checkpoint C --triton-repo DIR and serve DIR")
        if "timeout" in message.lower() or "timed out" in message.lower():
            return ModelError(f"Triton at {self.url} was too busy for {what} within the timeout ({message}); try again later")
        return ModelError(f"Triton at {self.url} refused {what}: {message}")

    def _infer(self, job: str, data: bytes, options: dict, timeout: float | None) -> dict[str, bytes]:
        from training.images import EmptyImageError

        if not data:
            raise EmptyImageError("the image is empty (0 bytes); send a photo")
        http, _ = _http()
        timeout = self.timeout if timeout is None else float(timeout)
        params = {k: v for k, v in options.items() if v is not None}
        params["timeout_s"] = timeout  # the server stops the job when it is over
        inp = http.InferInput(INPUTS[job], [1, len(data)], "UINT8")
        inp.set_data_from_numpy(np.frombuffer(data, np.uint8)[None], binary_data=True)
        outputs = [http.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS[job]]
        what = f"the {job} job"
        client = self._client(timeout)
        try:
            # timeout= (microseconds): a request still queued after it is rejected by the server.
            result = self._call(what, client.infer, MODEL_NAMES[job], [inp], outputs=outputs, parameters=params,
                                timeout=int(timeout * 1e6), wait=timeout)
        finally:
            client.close()
        answers = {}
        for name in OUTPUTS[job]:
            blob = result.as_numpy(name)
            if blob is None:
                raise ModelError(f"Triton at {self.url} answered {what} without {name!r}; is {MODEL_NAMES[job]} a petlens job model?")
            answers[name] = blob.tobytes()
        return answers

    def __repr__(self) -> str:
        return f"TritonJobs({self.url}, timeout={self.timeout:g} s)"
