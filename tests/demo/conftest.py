"""Demo fixtures: the tiny model served by the real demo app on a free local port, sample
photos and hostile uploads. Everything is made in the test session (no ../shared)."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path

import pytest

import tests.conftest as _root_module  # shared helpers; pytest puts the repo root on sys.path

_root = _root_module
LABELS, synthetic_photo = _root.LABELS, _root.synthetic_photo

FOOL_STEPS = 20  # the tiny model flips in a few steps; keeps the heavy calls short
IDEAL_STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    return _free_port()


@pytest.fixture(scope="session")
def make_photo():
    """``synthetic_photo(label, seed, size)`` from tests/conftest.py."""
    return synthetic_photo


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """label -> a synthetic photo of it (PNG) the tiny model gets right."""
    root = tmp_path_factory.mktemp("demo-photos")
    out = {}
    for label in LABELS:
        out[label] = root / f"my-{label}.png"
        synthetic_photo(label, 7, size=(320, 256)).save(out[label])
    return out


@pytest.fixture(scope="session")
def demo_examples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-examples")
    for label in LABELS:
        synthetic_photo(label, 11).save(root / f"example-{label}.png")
    return root


@pytest.fixture(scope="session")
def demo_models(tiny_onnx, tiny_checkpoint):
    """(Classifier, torch model, labels), loaded once like the app does."""
    from export.runtime import Classifier
    from training import load_checkpoint

    model, labels = load_checkpoint(tiny_checkpoint)
    return Classifier.load(tiny_onnx), model, labels


def make_service(classifier, checkpoint, **options):
    """A :class:`service.Service` over a loaded classifier and a checkpoint file."""
    from service import Service
    from service.jobs import LocalJobs

    return Service(classifier, LocalJobs(checkpoint), **{"fool_steps": FOOL_STEPS, "ideal_steps": IDEAL_STEPS,
                                                        "ideal_size": 96, **options})


@pytest.fixture(scope="session")
def demo_service(demo_models, tiny_checkpoint):
    return make_service(demo_models[0], tiny_checkpoint)


def make_ctx(service, *folders):
    """What the tabs' handlers get, with photos allowed from ``folders`` (as if uploaded)."""
    from demo.common import Ctx
    from demo.uploads import Uploads

    return Ctx(service, Uploads(*folders), [], {}, {}, {})


@pytest.fixture(scope="session")
def demo_url(demo_service, demo_examples) -> str:
    """The demo, built by ``build_demo`` on the tiny model, served in this process."""
    from demo.app import build_demo, launch

    app = build_demo(demo_service, examples=demo_examples)
    _, url, _ = launch(app, host="127.0.0.1", port=_free_port(), examples=demo_examples,
                       prevent_thread_lock=True, quiet=True)
    yield url.rstrip("/")
    app.close()


@pytest.fixture(scope="session")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 50_000) -> bytes:
    """A valid PNG header declaring side×side pixels (2.5 gigapixels) in under 1 KB."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """kind -> (file, a word the refusal must contain)."""
    root = tmp_path_factory.mktemp("demo-hostile")
    buf = io.BytesIO()
    synthetic_photo("cat", 3).save(buf, format="PNG")
    full = buf.getvalue()
    files = {
        "empty": ("empty.jpg", b"", "empty"),
        "truncated": ("truncated.png", full[: len(full) * 2 // 3], "truncated"),
        "non-image": ("notes.png", b"my shopping list, not a photo\n" * 20, "not an image"),
        "decompression-bomb": ("bomb.png", bomb_png(), "too large"),
    }
    out = {}
    for kind, (name, data, word) in files.items():
        (root / name).write_bytes(data)
        out[kind] = (root / name, word)
    return out
