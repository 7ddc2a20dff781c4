"""What the job models run, without a server: export.jobs.run_jobs on a batch of requests
(one outcome per request, errors per request, a caller that gave up) and the wire format
back into the in-process result types."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from export.jobs import JobFailed, JobLimits, JobRequest, explanation, fool_result, ideal_result, run_jobs
from tests.conftest import synthetic_photo
from training import load_checkpoint


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_a_batch_answers_each_request_on_its_own(tiny):
    model, labels = tiny
    photo = _png(synthetic_photo("dog", 50, size=(120, 96)))
    requests = [
        JobRequest(photo, {"target": "cat", "eps": 8 / 255, "steps": 3}),
        JobRequest(b"not a photo", {"target": "cat"}),
        JobRequest(photo, {"target": "zebra"}),
        JobRequest(photo, {"target": "cat", "steps": 10_000}),
        JobRequest(photo, {"target": "cat", "colour": "red"}),
        JobRequest(photo, {"target": "cat"}, deadline=time.monotonic() - 1),  # its caller already gave up
        JobRequest(photo, {"target": "dog", "eps": 8 / 255, "steps": 3, "seed": 1}),  # another group
    ]
    out = run_jobs("fool", model, labels, JobLimits(max_steps=50), requests)
    assert len(out) == len(requests)
    kinds = [o.kind if isinstance(o, JobFailed) else "ok" for o in out]
    assert kinds == ["ok", "image", "value", "value", "value", "timeout", "ok"]
    assert "not an image" in str(out[1]) and "unknown target 'zebra'" in str(out[2])
    assert "(petlens.max_steps)" in str(out[3]) and "unknown option 'colour'" in str(out[4])
    assert out[1].wire().startswith("petlens image: ")
    result = fool_result(out[0])
    assert result.image.size == (120, 96) and result.source.label in labels and result.steps <= 3
    assert json.loads(out[0]["result"])["linf"] <= 8 / 255 + 1e-9


def test_ideal_and_explain_outcomes_decode_to_the_in_process_types(tiny):
    from training.explain import Explanation

    model, labels = tiny
    (ideal,) = run_jobs("ideal", model, labels, JobLimits(), [JobRequest(b"cat", {"steps": 2, "size": 32})])
    image, record = ideal_result(ideal)
    assert image.size == (32, 32) and record["label"] == "cat" and 0 <= record["prob"] <= 1
    (cam,) = run_jobs("explain", model, labels, JobLimits(), [JobRequest(_png(synthetic_photo("cat", 51, size=(100, 80))))])
    why = explanation(cam)
    assert isinstance(why, Explanation) and why.overlay.size == (100, 80) and set(why.grids) == {"early", "middle", "late"}
    assert isinstance(why.cam, np.ndarray) and why.label in labels
    (big,) = run_jobs("ideal", model, labels, JobLimits(max_size=64), [JobRequest(b"cat", {"size": 128})])
    assert isinstance(big, JobFailed) and "size must be between 32 and 64 on this server (petlens.max_size)" in str(big)
