"""The torch jobs -- fool-me, ideal image, Grad-CAM -- as Triton requests.

One module for both ends: what the python-backend models ``petlens_fool``, ``petlens_ideal``
and ``petlens_explain`` run inside the server (:func:`run_jobs`, called by the ``model.py``
that :func:`export.triton.write_job_models` writes), and how the client
(:class:`export.triton_jobs.TritonJobs`) turns the answers back into the very objects the
in-process functions return (:func:`fool_result`, :func:`explanation`). The work is the
project's own: :func:`training.adversarial.fool_batch`, :func:`training.ideal.ideal_image`,
:func:`training.explain.explain`, on photos decoded by :func:`training.images.load_image`.

On the wire every blob is a ``UINT8 [-1]`` tensor (``allow_ragged_batch``, so photos of any
length batch together): the encoded photo (or the label, UTF-8) in; PNGs and one JSON
``result`` out. Not ``TYPE_STRING``: the python-backend stub of the nvidia-pytriton wheel is
built against numpy 1 and cannot read or write BYTES tensors under numpy 2; numeric tensors
through DLPack work with both. The options (target, eps, steps, ...) travel as request
parameters. A request's error is ``"petlens <kind>: <message>"`` (kind ``image``, ``value``,
``timeout`` or ``internal``), which the client raises as the matching exception.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

JOBS = ("fool", "ideal", "explain")
MODEL_NAMES = {job: f"petlens_{job}" for job in JOBS}
INPUTS = {"fool": "photo", "ideal": "label", "explain": "photo"}
OUTPUTS = {"fool": ("image", "result"), "ideal": ("image", "result"), "explain": ("overlay", "early", "middle", "late", "result")}
OPTIONS = {  # request parameters each job takes (besides timeout_s)
    "fool": ("target", "eps", "steps", "robust", "seed"),
    "ideal": ("steps", "size", "seed", "tv_weight"),
    "explain": ("label",),
}
ERROR_PREFIX = "petlens "
CANCEL_CHECK_S = 0.5  # Triton's is_cancelled() is a round trip to the server process (~10 ms): not every step


@dataclass(frozen=True)
class JobLimits:
    """What a server accepts; written into the model configs as ``petlens.<field>``
    parameters and enforced by :func:`run_jobs` with an error that names the limit."""

    max_pixels: int = 24_000_000  # decoded photo size (training.images refuses larger)
    max_side: int = 1024  # fool-me works at most at this longest side (larger photos are downscaled)
    max_steps: int = 300  # attack / rendering steps per request
    eps_min: float = 1 / 255
    eps_max: float = 16 / 255
    max_size: int = 512  # ideal image side

    def as_params(self) -> dict[str, str]:
        return {f.name: repr(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_params(cls, params: dict[str, str]) -> JobLimits:
        kinds = {f.name: (float if f.type in ("float", float) else int) for f in dataclasses.fields(cls)}
        return cls(**{k: kinds[k](params[k]) for k in kinds if k in params})


class JobFailed(ValueError):
    """One request's failure inside the server; ``kind``: image, value, timeout or internal."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def wire(self) -> str:
        return f"{ERROR_PREFIX}{self.kind}: {self}"


@dataclass
class JobRequest:
    """One request as the server sees it: the input blob, the options, and whether its
    caller still wants it (``cancelled()``: Triton's cancellation; ``deadline``: the
    caller's own timeout, counted from arrival)."""

    data: bytes
    options: dict = field(default_factory=dict)
    deadline: float = float("inf")  # time.monotonic()
    cancelled: Callable[[], bool] = lambda: False
    _asked: float = field(default=-float("inf"), init=False, repr=False)
    _gone: bool = field(default=False, init=False, repr=False)

    def wanted(self) -> bool:
        """Is the caller still waiting? (asked before every attack / rendering step)"""
        now = time.monotonic()
        if now - self._asked >= CANCEL_CHECK_S:
            self._asked, self._gone = now, self._gone or bool(self.cancelled())
        return now < self.deadline and not self._gone


Outcome = dict[str, bytes] | JobFailed


def run_jobs(job: str, model, labels: list[str], limits: JobLimits, requests: list[JobRequest]) -> list[Outcome]:
    """Run one server batch of ``job`` requests; one outcome per request, in order: the output
    blobs by name, or the :class:`JobFailed` to answer with."""
    run = {"fool": _run_fool, "ideal": _run_ideal, "explain": _run_explain}[job]
    outcomes: list[Outcome | None] = [None] * len(requests)
    for i, r in enumerate(requests):
        unknown = sorted(set(r.options) - set(OPTIONS[job]))
        if unknown:
            outcomes[i] = JobFailed("value", f"unknown option {unknown[0]!r} for {job}; known: {', '.join(OPTIONS[job])}")
        elif not r.wanted():
            outcomes[i] = JobFailed("timeout", "the caller gave up before the job started")
    todo = [i for i, o in enumerate(outcomes) if o is None]
    for i, outcome in zip(todo, run(model, labels, limits, [requests[i] for i in todo])):
        outcomes[i] = outcome
    return [o if isinstance(o, JobFailed) or requests[i].wanted() else JobFailed("timeout", "the caller gave up; stopped")
            for i, o in enumerate(outcomes)]


def _failure(exc: BaseException) -> JobFailed:
    from training.images import ImageError

    if isinstance(exc, JobFailed):
        return exc
    if isinstance(exc, ImageError):
        return JobFailed("image", str(exc))
    if isinstance(exc, ValueError):
        return JobFailed("value", str(exc))
    return JobFailed("internal", f"{type(exc).__name__}: {exc}")


def _number(options: dict, name: str, kind, default, lo, hi, limit: str = ""):
    value = options.get(name, default)
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise JobFailed("value", f"{name} must be a {kind.__name__}, got {value!r}") from None
    if not lo <= value <= hi:
        where = f" ({limit})" if limit else ""
        raise JobFailed("value", f"{name} must be between {lo:g} and {hi:g} on this server{where}, got {value:g}")
    return value


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _json(record: dict) -> bytes:
    return json.dumps(record).encode()


# --- fool-me: one fool_batch per group of requests with the same settings -------------------


def _fool_settings(r: JobRequest, labels: list[str], limits: JobLimits):
    from training.adversarial import DEFAULT_ROBUST_STEPS, DEFAULT_STEPS
    from training.images import load_image

    o = r.options
    target = o.get("target")
    if target not in labels:
        raise JobFailed("value", f"unknown target {target!r}; this model knows: {', '.join(labels)}")
    robust = bool(o.get("robust", False))
    eps = _number(o, "eps", float, 8 / 255 if robust else 2 / 255, limits.eps_min - 1e-9, limits.eps_max + 1e-9, "petlens.eps_min/eps_max")
    steps = _number(o, "steps", int, DEFAULT_ROBUST_STEPS if robust else DEFAULT_STEPS, 1, limits.max_steps, "petlens.max_steps")
    seed = _number(o, "seed", int, 0, 0, 2**31 - 1)
    photo = load_image(r.data, max_pixels=limits.max_pixels)
    return photo, target, (eps, steps, robust, seed)


def _run_fool(model, labels, limits: JobLimits, requests: list[JobRequest]) -> list[Outcome]:
    from training.adversarial import fool_batch

    outcomes: list[Outcome | None] = [None] * len(requests)
    groups: dict[tuple, list[tuple[int, Image.Image, str]]] = {}
    for i, r in enumerate(requests):
        try:
            photo, target, key = _fool_settings(r, labels, limits)
            groups.setdefault(key, []).append((i, photo, target))
        except Exception as exc:  # each request gets its own answer
            outcomes[i] = _failure(exc)
    for (eps, steps, robust, seed), members in groups.items():
        index = [i for i, _, _ in members]
        try:
            results = fool_batch(model, labels, [p for _, p, _ in members], [t for _, _, t in members],
                                 eps=eps, steps=steps, robust=robust, seed=seed, max_side=limits.max_side,
                                 keep=lambda j, index=index: requests[index[j]].wanted())
        except Exception as exc:
            for i in index:
                outcomes[i] = _failure(exc)
            continue
        for i, result in zip(index, results):
            outcomes[i] = {"image": _png(result.image), "result": _json(fool_record(result))}
    return outcomes


def fool_record(result) -> dict:
    """A :class:`training.adversarial.FoolResult`'s fields, as JSON (all but the image)."""
    return {
        "source": dataclasses.asdict(result.source), "result": dataclasses.asdict(result.result),
        "linf": result.linf, "steps": result.steps, "seconds": result.seconds, "success": result.success,
        "resized_from": result.resized_from, "reshared": {k: dataclasses.asdict(v) for k, v in result.reshared.items()},
    }


def fool_result(outputs: dict[str, bytes]):
    """The server's answer back into a :class:`training.adversarial.FoolResult`."""
    from training.adversarial import FoolResult, Judged

    r = json.loads(outputs["result"])
    return FoolResult(
        image=_image(outputs["image"]), source=Judged(**r["source"]), result=Judged(**r["result"]),
        linf=float(r["linf"]), steps=int(r["steps"]), seconds=float(r["seconds"]), success=bool(r["success"]),
        resized_from=tuple(r["resized_from"]) if r["resized_from"] else None,
        reshared={k: Judged(**v) for k, v in r["reshared"].items()},
    )


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


# --- ideal image and Grad-CAM: one request after another -------------------------------------


def _each(requests: list[JobRequest], one) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for r in requests:
        try:
            outcomes.append(one(r) if r.wanted() else JobFailed("timeout", "the caller gave up before the job started"))
        except Exception as exc:
            outcomes.append(_failure(exc))
    return outcomes


def _run_ideal(model, labels, limits: JobLimits, requests: list[JobRequest]) -> list[Outcome]:
    from training.ideal import ideal_image, label_probability
    from training.model import input_size
    from training.optvis import DEFAULT_STEPS

    def one(r: JobRequest) -> dict[str, bytes]:
        start, o = time.perf_counter(), r.options
        label = r.data.decode("utf-8", "replace")
        steps = _number(o, "steps", int, min(DEFAULT_STEPS, limits.max_steps), 1, limits.max_steps, "petlens.max_steps")
        size = _number(o, "size", int, input_size(model), 32, limits.max_size, "petlens.max_size")
        seed = _number(o, "seed", int, 0, 0, 2**31 - 1)
        tv = None if o.get("tv_weight") is None else _number(o, "tv_weight", float, 0.0, 0.0, 1e6)

        def check(step, total, _preview):
            if not r.wanted():
                raise JobFailed("timeout", f"the caller gave up; stopped at step {step} of {total}")

        image = ideal_image(model, labels, label, steps=steps, size=size, seed=seed, tv_weight=tv, progress=check)
        png = _png(image)
        prob = label_probability(model, labels, _image(png), label)
        record = {"label": label, "prob": prob, "size": image.width, "steps": steps, "seed": seed,
                  "seconds": time.perf_counter() - start}
        return {"image": png, "result": _json(record)}

    return _each(requests, one)


def _run_explain(model, labels, limits: JobLimits, requests: list[JobRequest]) -> list[Outcome]:
    from training.explain import STAGES, explain
    from training.images import load_image

    def one(r: JobRequest) -> dict[str, bytes]:
        photo = load_image(r.data, max_pixels=limits.max_pixels)
        result = explain(model, labels, photo, label=r.options.get("label"))
        record = {"label": result.label, "prob": result.prob, "top": result.top, "seconds": result.seconds,
                  "cam": None if result.cam is None else result.cam.tolist(), "box": result.box, "peak": result.peak}
        return {"overlay": _png(result.overlay), **{s: _png(result.grids[s]) for s in STAGES}, "result": _json(record)}

    return _each(requests, one)


def explanation(outputs: dict[str, bytes]):
    """The server's answer back into a :class:`training.explain.Explanation`."""
    from training.explain import STAGES, Explanation

    r = json.loads(outputs["result"])
    return Explanation(
        overlay=_image(outputs["overlay"]), label=r["label"], prob=float(r["prob"]),
        grids={s: _image(outputs[s]) for s in STAGES if s in outputs}, seconds=float(r["seconds"]),
        top=[(k, float(p)) for k, p in r["top"]], cam=None if r["cam"] is None else np.asarray(r["cam"], np.float32),
        box=tuple(r["box"]), peak=tuple(r["peak"]),
    )


def ideal_result(outputs: dict[str, bytes]) -> tuple[Image.Image, dict]:
    """The server's ideal image and its JSON record (label, prob, size, steps, seed, seconds)."""
    return _image(outputs["image"]), json.loads(outputs["result"])
