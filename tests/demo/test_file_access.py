"""The demo reads only what a visitor uploaded (or the page's examples), whatever the raw API sends.

Gradio's HTTP API (``/gradio_api/call/<api>``) accepts any JSON, and the demo's handlers run
without Gradio's preprocessing, so ``{"path": "/some/file/on/the/server"}`` once reached the
image intake: ``/fool_me`` returned a copy of the file, ``/explain`` an overlay of it, and the
error messages told which paths exist. Every endpoint that takes a photo is called here the way
a stranger would, with plain HTTP.
"""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest

from demo.uploads import NOT_AN_UPLOAD

# api name -> the arguments after the photo
ENDPOINTS = {"classify": [], "assess": [], "fool_me": ["cat", 4, False], "explain": [None]}


def call(url: str, api: str, data: list, timeout: float = 60.0) -> tuple[str, object]:
    """(event, payload) of one raw API call: "complete" with the outputs, or "error" (also when
    Gradio refuses the submission itself, HTTP 4xx, before any handler runs)."""
    with httpx.Client(timeout=timeout) as http:
        r = http.post(f"{url}/gradio_api/call/{api}", json={"data": data})
        if 400 <= r.status_code < 500:
            return "error", r.json().get("detail")
        r.raise_for_status()
        event_id = r.json()["event_id"]
        event, payload = None, None
        with http.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    text = line.split(":", 1)[1].strip()
                    payload = json.loads(text) if text and text != "null" else None
                    return event, payload
    raise AssertionError(f"/{api} sent no result")


@pytest.fixture(scope="module")
def server_files(tmp_path_factory, photos, tiny_onnx, tiny_checkpoint):
    """Files a stranger might name: a real photo outside the upload cache (the old code served
    it back), a folder, the model files, a missing file, relative and ../ paths, a URL."""
    secret_dir = tmp_path_factory.mktemp("server-private")
    secret = secret_dir / "private-photo.png"
    secret.write_bytes(photos["dog"].read_bytes())
    relative = os.path.relpath(secret)
    return {
        "absolute photo": str(secret),
        "relative photo": relative,
        "dot-dot photo": "/tmp/gradio/../../" + str(secret).lstrip("/"),
        "missing file": str(secret_dir / "no-such-photo.png"),
        "folder": str(secret_dir),
        "onnx model": str(tiny_onnx),
        "checkpoint": str(tiny_checkpoint),
        "system file": "/etc/passwd",
        "url": "http://127.0.0.1:1/cat.png",
    }


@pytest.mark.parametrize("api", sorted(ENDPOINTS))
@pytest.mark.parametrize("shape", ["filedata", "string"])
def test_no_endpoint_reads_a_server_path(demo_url, server_files, api, shape):
    answers = {}
    for what, path in server_files.items():
        photo = {"path": path} if shape == "filedata" else path
        event, payload = call(demo_url, api, [photo, *ENDPOINTS[api]])
        assert event == "error", f"/{api} accepted {what} ({path}): {payload}"
        answers[what] = payload
    # One answer for every path: nothing tells a stranger which files exist. (Gradio's own
    # refusal of a bare string echoes the value sent, which tells nothing about the server.)
    messages = {re.sub(r"input_value=.*?, input_type", "", json.dumps(p, sort_keys=True)) for p in answers.values()}
    assert len(messages) == 1, messages
    message = answers["absolute photo"]
    if shape == "filedata" or api in ("classify", "assess"):
        assert message is not None and NOT_AN_UPLOAD in json.dumps(message), message
    else:  # a bare string is not an image payload at all: Gradio's own validation of the
        # component's data refuses it before the handler runs (still one answer for every path)
        assert "ImageData" in json.dumps(message), message


def test_a_link_is_not_fetched(demo_url):
    event, payload = call(demo_url, "classify", [{"url": "http://127.0.0.1:1/cat.png"}])
    assert event == "error" and NOT_AN_UPLOAD in json.dumps(payload)


@pytest.mark.parametrize("api", sorted(ENDPOINTS))
def test_a_real_upload_still_works(demo_url, photos, api):
    """The control: the same photo, uploaded the way the page does, is read."""
    with httpx.Client(timeout=60) as http:
        with photos["dog"].open("rb") as f:
            r = http.post(f"{demo_url}/gradio_api/upload", files={"files": ("dog.png", f, "image/png")})
        r.raise_for_status()
        path = r.json()[0]
    photo = {"path": path, "orig_name": "dog.png", "meta": {"_type": "gradio.FileData"}}
    event, payload = call(demo_url, api, [photo, *ENDPOINTS[api]])
    assert event == "complete", payload
