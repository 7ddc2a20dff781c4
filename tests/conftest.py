"""Shared fixtures: synthetic photos and a tiny model trained on them in the session.

Nothing here needs ``../shared`` or the network: the images are drawn by the tests and the
model starts from random weights (a frozen random trunk still gives features a linear head
can separate on the synthetic task).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

LABELS = ["cat", "dog"]


def synthetic_photo(label: str, seed: int, size: tuple[int, int] = (160, 128)) -> Image.Image:
    """A learnable stand-in for a pet photo: 'cat' is a warm disc, 'dog' a cool square,
    on a noisy background, at a random place and scale."""
    rng = random.Random(f"{label}-{seed}")
    w, h = size
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(90, 166, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.randint(min(w, h) // 5, min(w, h) // 3)
    cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
    if label == "cat":
        color = (rng.randint(200, 255), rng.randint(90, 140), rng.randint(0, 60))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        color = (rng.randint(0, 60), rng.randint(90, 150), rng.randint(200, 255))
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    return img


def write_imagefolder(root: Path, per_class: int, seed0: int = 0, labels=LABELS, ext: str = ".png") -> Path:
    """``root/<label>/<label>_<i>.png`` for each label."""
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            synthetic_photo(label, seed0 + i).save(root / label / f"{label}_{i:03d}{ext}")
    return root


def finetuned_copy(model, first_changed: int, seed: int = 0):
    """A copy of ``model`` whose trunk blocks from ``first_changed`` on were "fine-tuned"
    (weights and BatchNorm statistics moved), as ``--mode finetune --unfreeze late`` does."""
    import copy

    import torch

    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in list(tuned.trunk.children())[first_changed:]:
            for t in block.state_dict().values():
                if t.dtype.is_floating_point:
                    t.add_(0.05 * torch.randn(t.shape, generator=g) * (t.abs().mean() + 0.1))
    return tuned


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """An ImageFolder root with ``train/`` (24 per class) and ``val/`` (12 per class)."""
    root = tmp_path_factory.mktemp("synthetic")
    write_imagefolder(root / "train", 24, seed0=0)
    write_imagefolder(root / "val", 12, seed0=1000)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synthetic_data) -> Path:
    """A mobilenet_v3_small (random trunk) whose head is trained on ``synthetic_data``."""
    import torch

    from training import build_model, save_checkpoint
    from training.presets import preprocess

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", len(LABELS), weights="none").eval()
    xs, ys = [], []
    for y, label in enumerate(LABELS):
        for f in sorted((synthetic_data / "train" / label).iterdir()):
            xs.append(preprocess(Image.open(f).convert("RGB")))
            ys.append(y)
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    with torch.no_grad():
        feats = model.embed(x)
    # Standardize through the head's weights so a short optimization is enough.
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    linear = model.head[1]
    opt = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear((feats - mu) / sd), y)
        loss.backward()
        opt.step()
    with torch.no_grad():  # fold the standardization into the linear layer
        linear.bias -= (linear.weight / sd * mu).sum(1)
        linear.weight /= sd
        acc = (linear(feats).argmax(1) == y).float().mean().item()
    assert acc > 0.9, f"tiny fixture model failed to fit the synthetic task ({acc:.2f})"
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model, LABELS, metrics={"train_accuracy": acc})
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint, synthetic_data) -> Path:
    """``tiny_checkpoint`` exported by ``export.convert.export_onnx`` (fp32, dynamic batch,
    labels in metadata), already checked against torch on the synthetic val photos."""
    from export.convert import export_onnx

    path = tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx"
    export_onnx(tiny_checkpoint, path, verify_images=synthetic_data / "val", n_verify=8)
    return path


@pytest.fixture(scope="session")
def tiny_ood_checkpoint(tmp_path_factory, tiny_checkpoint, synthetic_data) -> Path:
    """``tiny_checkpoint``'s model plus "is it a pet?" statistics (``training.ood.fit_ood``,
    kNN cosine) fitted on its embeddings of the synthetic train photos and calibrated on the
    val photos, saved as a new checkpoint (``extra["ood"]``)."""
    import torch

    from training import load_checkpoint, save_checkpoint
    from training.ood import fit_ood
    from training.presets import preprocess_batch

    model, labels = load_checkpoint(tiny_checkpoint)

    def embed(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        files = [(f, y) for y, label in enumerate(labels) for f in sorted((synthetic_data / split / label).iterdir())]
        x = torch.from_numpy(preprocess_batch([Image.open(f).convert("RGB") for f, _ in files]))
        with torch.no_grad():
            return model.embed(x), torch.tensor([y for _, y in files])

    (train_x, train_y), (val_x, _) = embed("train"), embed("val")
    state = fit_ood(train_x, train_y, val_x)
    path = tmp_path_factory.mktemp("tiny_ood") / "tiny-ood.pt"
    save_checkpoint(path, model, labels, extra={"ood": state})
    return path


@pytest.fixture(scope="session")
def tiny_ood_onnx(tmp_path_factory, tiny_ood_checkpoint, synthetic_data) -> Path:
    """``tiny_ood_checkpoint`` exported by ``export.convert.export_onnx``: outputs
    ``logits``, ``probabilities`` and ``ood_score``; metadata ``ood`` holds the threshold."""
    from export.convert import export_onnx

    path = tmp_path_factory.mktemp("tiny_ood_onnx") / "tiny-ood.onnx"
    export_onnx(tiny_ood_checkpoint, path, verify_images=synthetic_data / "val", n_verify=8)
    return path


# Four Oxford-IIIT Pet breed names (two cats, two dogs), so the trainer's default
# --breed-species oxford maps them; the photos are synthetic_photo's cats and dogs.
BREEDS = ["Abyssinian", "Bengal", "beagle", "pug"]
BREED_SPECIES = ["cat", "cat", "dog", "dog"]


def breed_photo(breed: str, seed: int, size: tuple[int, int] = (160, 128)) -> Image.Image:
    """A learnable stand-in for a breed photo: its species' ``synthetic_photo``, and for the
    second breed of each species (Bengal, pug) a black bar across the top."""
    species = BREED_SPECIES[BREEDS.index(breed)]
    img = synthetic_photo(species, 7919 * BREEDS.index(breed) + seed, size)
    if breed in ("Bengal", "pug"):
        ImageDraw.Draw(img).rectangle((0, 0, img.width, img.height // 8), fill=(0, 0, 0))
    return img


@pytest.fixture(scope="session")
def breeds_data(tmp_path_factory) -> Path:
    """An ImageFolder root of ``BREEDS`` with ``train/`` (12 per breed) and ``val/`` (6 per breed)."""
    root = tmp_path_factory.mktemp("breeds")
    for split, n, seed0 in (("train", 12, 0), ("val", 6, 1000)):
        for breed in BREEDS:
            (root / split / breed).mkdir(parents=True)
            for i in range(n):
                breed_photo(breed, seed0 + i).save(root / split / breed / f"{breed}_{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_breeds_run(tmp_path_factory, synthetic_data, breeds_data) -> tuple[Path, dict]:
    """``python -m training --breeds`` on the synthetic photos (head mode, random
    mobilenet_v3_small trunk): ``(run folder, metrics)``; its model.pt has both heads and
    "is it a pet?" statistics."""
    from training.__main__ import get_args_parser, main

    out = tmp_path_factory.mktemp("breeds_run")
    argv = ["--data", synthetic_data, "--breeds", breeds_data, "--out", out, "--mode", "head", "--epochs", "15",
            "--arch", "mobilenet_v3_small", "--weights", "none", "--workers", "0", "--batch-size", "16"]
    return out, main(get_args_parser().parse_args([str(a) for a in argv]))


@pytest.fixture(scope="session")
def tiny_breeds_onnx(tmp_path_factory, tiny_breeds_run, synthetic_data) -> Path:
    """``tiny_breeds_run``'s checkpoint exported: ``logits``, ``probabilities``, ``ood_score``,
    ``breed_probabilities``; metadata ``breeds`` and ``breed_species``."""
    from export.convert import export_onnx

    path = tmp_path_factory.mktemp("tiny_breeds_onnx") / "tiny-breeds.onnx"
    export_onnx(tiny_breeds_run[0] / "model.pt", path, verify_images=synthetic_data / "val", n_verify=8)
    return path


SHIFTED_KINDS = ("noise", "stripes", "triangle")


def shifted_photo(kind: str, seed: int, size: tuple[int, int] = (160, 128)) -> Image.Image:
    """An image clearly unlike ``synthetic_photo``'s (for "that's not a pet" tests):
    ``"noise"`` full-range colour noise, ``"stripes"`` black-and-white bars at a random
    angle and period, ``"triangle"`` a green triangle on a near-black background."""
    rng = np.random.default_rng([seed, SHIFTED_KINDS.index(kind)])
    w, h = size
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if kind == "stripes":
        period, angle = rng.integers(8, 24), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        on = ((xx * np.cos(angle) + yy * np.sin(angle)) // (period / 2)) % 2 == 1
        return Image.fromarray(np.repeat(on[..., None] * np.uint8(255), 3, axis=2), "RGB")
    img = Image.new("RGB", size, (int(rng.integers(0, 40)),) * 3)
    corners = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(3)]
    ImageDraw.Draw(img).polygon(corners, fill=(int(rng.integers(0, 80)), int(rng.integers(180, 256)), int(rng.integers(0, 80))))
    return img


def run_tool(entry, argv, capsys) -> tuple[int, str, str]:
    """Call a console-script entry (``training.fool.cli``, ...) as a user would:
    (exit status, stdout, stderr). Holds every tool to the one convention: a user's mistake
    (status 2) is one ``error: ...`` line on stderr and never a traceback."""
    try:
        code = entry([str(a) for a in argv]) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    if code == 2:
        assert "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith(("error: ", "usage: ")) or ": error: " in err, err
    return code, out, err


def with_ood_thresholds(src: Path, dst: Path, threshold: float, refuse_threshold: float | None) -> Path:
    """A copy of the exported model ``src`` calibrated differently: its metadata ``ood`` gets
    these thresholds (``refuse_threshold`` None: a model from before the middle answer). The
    graph is untouched, so scores are real; only the verdict's cut-offs move, which lets a
    test put a given photo in the "pet", "unsure" or "not_pet" band (training.verdict)."""
    import json

    import onnx

    model = onnx.load(str(src))
    props = {p.key: p for p in model.metadata_props}
    meta = json.loads(props["ood"].value)
    meta["threshold"] = threshold
    if refuse_threshold is None:
        meta.pop("refuse_threshold", None)
    else:
        meta["refuse_threshold"] = refuse_threshold
    props["ood"].value = json.dumps(meta)
    onnx.save(model, str(dst))
    return dst


# --- a real Triton server (tests/export/tritonserver.py), started once per session --------

SHIPPED_ONNX = Path(__file__).resolve().parents[1] / "models" / "catsdogs.onnx"
JOB_MODELS = ["petlens_fool", "petlens_ideal", "petlens_explain"]


@pytest.fixture(scope="session")
def triton_files():
    """The server files from the nvidia-pytriton wheel; skips (with the reason) without them."""
    from tests.export.tritonserver import find_server

    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install -e '.[triton]')")
    files, why = find_server()
    if files is None:
        pytest.skip(why)
    return files


@pytest.fixture(scope="session")
def triton_repos(tmp_path_factory, tiny_ood_checkpoint) -> tuple[Path, Path]:
    """``(exported, twin)``: the repository ``export.triton`` writes for the shipped model, and
    the python-backend twin the server runs. The twin repository also holds ``mismatch``
    (a config promising 3 classes of a 2-class model), ``broken`` (fails to load), and the
    torch job models (python backend already, so as written) for ``tiny_ood_checkpoint``."""
    from export.triton import write_job_models, write_triton_repo
    from tests.export.tritonserver import python_twin

    root = tmp_path_factory.mktemp("triton")
    exported = write_triton_repo(SHIPPED_ONNX, root / "exported", name="catsdogs")
    twin = root / "twin"
    python_twin(exported, twin)
    mismatch = python_twin(write_triton_repo(SHIPPED_ONNX, root / "other", name="mismatch"), twin)
    config = mismatch / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 2 ]", "dims: [ 3 ]"))
    broken = python_twin(write_triton_repo(SHIPPED_ONNX, root / "other", name="broken"), twin)
    (broken / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('weights are missing')\n")
    write_job_models(tiny_ood_checkpoint, twin, kind="cpu", threads=1)
    return exported, twin


@pytest.fixture(scope="session")
def triton_server(triton_files, triton_repos, tmp_path_factory):
    """tritonserver on a free loopback port serving the twin repository (the classifier's twin
    and the torch job models: one server for all the Triton tests); always stopped."""
    from tests.export.tritonserver import TritonServer

    server = TritonServer(triton_repos[1], triton_files, tmp_path_factory.mktemp("tritonserver"))
    server.start(timeout=240, models=["catsdogs", "mismatch", *JOB_MODELS])
    try:
        yield server
    finally:
        server.stop()
