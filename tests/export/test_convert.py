"""ONNX export: torch parity on generated photos, dynamic batch, metadata, int8, the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from export.convert import ExportError, export_onnx, verify
from export.runtime import Classifier
from tests.conftest import LABELS, finetuned_copy, run_tool, synthetic_photo
from training import load_checkpoint
from training.presets import preprocess


@pytest.fixture(scope="module")
def fresh_photos():
    """Photos neither the fit nor the export check has seen, in odd sizes and aspects."""
    sizes = [(160, 128), (97, 301), (640, 480), (224, 224), (333, 250), (128, 512)]
    return [synthetic_photo(LABELS[i % 2], 5000 + i, sizes[i]) for i in range(len(sizes))]


def test_onnx_matches_torch_within_1e4(tiny_checkpoint, tiny_onnx, fresh_photos):
    model, _ = load_checkpoint(tiny_checkpoint)
    batch = np.stack([preprocess(im) for im in fresh_photos])
    with torch.inference_mode():
        ref = torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
    got = Classifier.load(tiny_onnx).probabilities(batch)
    assert got.shape == ref.shape == (len(fresh_photos), len(LABELS))
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    # verify() (what the exporter runs) agrees: it also runs each image on its own.
    assert verify(tiny_checkpoint, tiny_onnx, fresh_photos) <= 1e-4


def test_batch_axis_is_dynamic(tiny_onnx, fresh_photos):
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 224, 224]
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities"]
    batch = np.stack([preprocess(im) for im in fresh_photos])
    full = sess.run(["probabilities"], {"image": batch})[0]
    for n in (1, 2, 5):
        logits, probs = sess.run(None, {"image": batch[:n]})
        assert probs.shape == logits.shape == (n, len(LABELS))
        np.testing.assert_allclose(probs, full[:n], atol=1e-6)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
        e = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), atol=1e-6)


def test_metadata_describes_the_model(tiny_checkpoint, tiny_onnx):
    proto = onnx.load(str(tiny_onnx))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["labels"]) == LABELS
    assert meta["arch"] == "mobilenet_v3_small" and meta["image_size"] == "224" and meta["resize_size"] == "256"
    assert meta["precision"] == "fp32" and meta["format"] == "petlens-onnx/1"
    assert meta["source_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert float(meta["train_accuracy"]) > 0.9 and "train_accuracy" in json.loads(meta["metrics"])
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 18
    onnx.checker.check_model(proto, full_check=True)
    # Normalization is in the graph: the ImageNet mean appears as a constant.
    consts = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.dims and np.prod(t.dims) == 3]
    assert any(np.allclose(c.ravel(), [0.485, 0.456, 0.406], atol=1e-6) for c in consts)


def test_int8_runs_and_mostly_agrees(tiny_onnx, tiny_int8, val_photos):
    fp32, int8 = Classifier.load(tiny_onnx), Classifier.load(tiny_int8)
    assert int8.labels == LABELS and int8.metadata["precision"] == "int8"
    assert json.loads(int8.metadata["quantization"])["per_channel"] is True
    ops = {n.op_type for n in onnx.load(str(tiny_int8)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # really quantized (QDQ)
    batch = np.stack([fp32.preprocess(f) for f, _ in val_photos])
    p32, p8 = fp32.probabilities(batch), int8.probabilities(batch)
    assert p8.shape == p32.shape and np.allclose(p8.sum(1), 1, atol=1e-5)
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.9
    truth = np.array([LABELS.index(label) for _, label in val_photos])
    assert (p8.argmax(1) == truth).mean() >= 0.85
    assert tiny_int8.stat().st_size < 0.5 * tiny_onnx.stat().st_size


@pytest.fixture(scope="module")
def calibrated_checkpoint(tmp_path_factory, fresh_photos):
    """A random mobilenet_v3_small whose BatchNorm statistics were measured on photos, so
    activations have unit scale (the tiny fixture's decay to ~1e-7, below float16's range)."""
    from training import build_model, save_checkpoint

    torch.manual_seed(1)
    model = build_model("mobilenet_v3_small", len(LABELS))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.stack([preprocess(synthetic_photo(LABELS[i % 2], 9000 + i)) for i in range(16)])))
    path = tmp_path_factory.mktemp("calibrated") / "calibrated.pt"
    save_checkpoint(path, model.eval(), LABELS)
    return path


@pytest.mark.slow
def test_fp16_export_stays_close_and_keeps_float32_io(calibrated_checkpoint, tmp_path, fresh_photos):
    out = tmp_path / "half.onnx"
    half = export_onnx(calibrated_checkpoint, out, verify_images=fresh_photos, fp16=True)
    assert half.metadata["precision"] == "fp16" and 0 < half.max_abs_diff <= 1e-2
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    # Against the float32 model, not just torch-in-fp16: the answer is the same photo's.
    clf16 = Classifier.load(out)
    batch = np.stack([preprocess(im) for im in fresh_photos])
    model, _ = load_checkpoint(calibrated_checkpoint)
    with torch.inference_mode():
        ref32 = torch.softmax(model(torch.from_numpy(batch)), 1).numpy()
    assert np.abs(clf16.probabilities(batch) - ref32).max() <= 2e-2
    assert np.ptp(ref32[:, 0]) > 1e-3  # the photos really lead to different outputs


@pytest.mark.slow
def test_failed_parity_check_leaves_existing_model_untouched(calibrated_checkpoint, tmp_path, fresh_photos):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous, working model")
    # fp16 cannot meet a 1e-7 tolerance: the check must refuse and keep the old file.
    with pytest.raises(ExportError, match="disagrees with torch"):
        export_onnx(calibrated_checkpoint, out, verify_images=fresh_photos[:2], fp16=True, tolerance=1e-7)
    assert out.read_bytes() == b"the previous, working model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp file left


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "make_args, phrase",
    [
        (lambda d: ["--checkpoint", str(d / "missing.pt"), "--out", str(d / "m.onnx")], "checkpoint not found"),
        (lambda d: ["--checkpoint", str(d / "bad.pt"), "--out", str(d / "m.onnx")], "not a checkpoint"),
        (lambda d: ["--checkpoint", str(d / "bad.pt")], "nothing to write"),
        (lambda d: ["--checkpoint", str(d / "bad.pt"), "--out", str(d / "m.onnx"), "--int8"], "--calibration"),
        (lambda d: ["--checkpoint", str(d / "bad.pt"), "--out", str(d / "m.onnx"), "--int8", "--calibration", str(d / "nope")], "not found"),
    ],
    ids=["missing", "not-a-checkpoint", "no-output", "int8-without-calibration", "missing-calibration"],
)
def test_cli_errors_are_messages_not_tracebacks(tmp_path, make_args, phrase, capsys):
    (tmp_path / "bad.pt").write_text("this is not a checkpoint")
    from export.__main__ import cli

    code, _, err = run_tool(cli, make_args(tmp_path), capsys)
    assert code == 2
    assert phrase in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_missing_checkpoint_in_a_real_process(tmp_path):
    proc = run_cli("--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx"))
    assert proc.returncode == 2
    assert "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_exports_quantizes_and_writes_triton_repo(tiny_checkpoint, synthetic_data, tmp_path):
    out = tmp_path / "models" / "pets.onnx"
    proc = run_cli(
        "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--verify", str(synthetic_data / "val"),
        "--int8", "--calibration", str(synthetic_data / "train"), "--triton-repo", str(tmp_path / "triton"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "max prob diff" in proc.stdout and "real photos" in proc.stdout
    int8 = out.with_name("pets-int8.onnx")
    assert out.is_file() and int8.is_file()
    assert (tmp_path / "triton" / "pets" / "1" / "model.onnx").read_bytes() == out.read_bytes()
    for job in ("fool", "ideal", "explain"):  # the torch jobs beside the classifier
        assert (tmp_path / "triton" / f"petlens_{job}" / "1" / "model.pt").read_bytes() == tiny_checkpoint.read_bytes()
    clf = Classifier.load(int8)
    photo = next((synthetic_data / "val" / "dog").iterdir())
    assert clf.predict(photo, top_k=1)[0][0] == "dog"


@pytest.mark.slow
def test_ood_scorer_rides_along_and_stays_float_in_int8(tiny_checkpoint, synthetic_data, tmp_path, fresh_photos):
    """A checkpoint with training.ood statistics exports a third output, ood_score, equal to
    torch's; metadata gets the scalars (threshold, method), never the feature bank. The model
    is a fine-tuned one with pretrained reference blocks, so the graph carries both tails and
    the score must be the *pretrained* features' score."""
    from export.quantize import quantize_int8
    from training import read_checkpoint, save_checkpoint
    from training.ood import fit_ood, ood_scorer_from_checkpoint, reference_state

    pretrained, labels = load_checkpoint(tiny_checkpoint)
    model = finetuned_copy(pretrained, len(pretrained.trunk) - 3).eval()
    photos = [(f, labels.index(d.name)) for d in sorted((synthetic_data / "train").iterdir()) for f in sorted(d.iterdir())]
    with torch.inference_mode():
        train = pretrained.embed(torch.from_numpy(np.stack([preprocess(Image.open(f).convert("RGB")) for f, _ in photos])))
        val = pretrained.embed(torch.from_numpy(np.stack([preprocess(im) for im in fresh_photos])))
    ref = reference_state(model.trunk, pretrained.trunk.state_dict())
    state = fit_ood(train, torch.tensor([y for _, y in photos]), val, k=3) | ref
    ckpt_path = save_checkpoint(tmp_path / "ood.pt", model, labels, extra={"ood": state})

    out = tmp_path / "ood.onnx"
    report = export_onnx(ckpt_path, out, verify_images=fresh_photos)
    assert report.max_abs_diff <= 1e-4  # covers probabilities and ood_score
    meta = json.loads(report.metadata["ood"])
    assert meta["method"] == "knn" and meta["threshold"] == pytest.approx(state["threshold"]) and "bank" not in meta
    assert meta["reference_from"] == ref["reference_from"] and "reference_weights" not in meta
    assert sum(len(p.value) for p in onnx.load(str(out)).metadata_props) < 10_000

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities", "ood_score"]
    batch = np.stack([preprocess(im) for im in fresh_photos])
    logits, score = sess.run(["logits", "ood_score"], {"image": batch})
    scorer = ood_scorer_from_checkpoint(read_checkpoint(ckpt_path))
    with torch.inference_mode():
        x = torch.from_numpy(batch)
        want = scorer(pretrained.embed(x), model(x)).numpy()
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=1e-4, atol=1e-4)  # the fine-tuned head decides
    assert score.shape == (len(batch),) and np.abs(score - want).max() <= 1e-4

    int8 = tmp_path / "ood-int8.onnx"
    quantize_int8(out, int8, synthetic_data / "train", n_calibration=16, n_check=8, min_agreement=0.0)
    graph = onnx.load(str(int8)).graph
    produced_by = {o: n for n in graph.node for o in n.output}
    # The scorer's MatMul against the bank and the head's Gemm read float tensors.
    for op in ("MatMul", "Gemm"):
        node = next(n for n in graph.node if n.op_type == op)
        assert all(produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in node.input)


def test_cli_names_what_a_non_checkpoint_is_and_what_a_checkpoint_lacks(tmp_path, capsys):
    """`python -m export` on a text file said '... (KeyError)'; a dict missing keys was a traceback."""
    import torch

    from export.__main__ import cli

    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n")
    code, _, err = run_tool(cli, ["--model", notes, "--out", tmp_path / "m.onnx"], capsys)
    assert code == 2 and err == (f"error: {notes} is not a checkpoint (not a file torch wrote); give the model (.pt) "
                                 "written by `python -m training`, e.g. models/catsdogs.pt\n")
    partial = tmp_path / "partial.pt"
    torch.save({"format": "petlens-checkpoint/1", "config": {"arch": "mobilenet_v3_small"}}, partial)
    code, _, err = run_tool(cli, ["--model", partial, "--out", tmp_path / "m.onnx"], capsys)
    assert code == 2 and err.startswith(f"error: {partial} is an incomplete petlens checkpoint: it lacks "
                                        "state_dict, config.num_classes, config.labels.")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_photo_folders_that_cannot_serve_are_user_errors(tiny_checkpoint, tiny_onnx, tmp_path, capsys):
    """Empty or unusable --verify / --calibration folders and a --triton-repo that is a file
    were exit 1, some only after the export had run; now exit 2 before any work."""
    from export.__main__ import cli
    from export.quantize import cli as quantize_cli

    empty, few, notes = tmp_path / "empty", tmp_path / "few", tmp_path / "notes.txt"
    empty.mkdir()
    few.mkdir()
    for i in range(3):
        synthetic_photo("cat", i).save(few / f"{i}.png")
    notes.write_text("not a folder")
    base = ["--model", tiny_checkpoint, "--out", tmp_path / "m.onnx"]
    cases = [
        (cli, [*base, "--verify", empty], f"no photos in {empty} to verify the export on; give a folder of real photos"),
        (cli, [*base, "--triton-repo", notes], f"--triton-repo is a folder (its models go in <name>/config.pbtxt and "
                                               f"<name>/1/model.onnx), and {notes} is a file"),
        (cli, [*base, "--int8", "--calibration", few], f"--calibration {few} has 3 photos; int8 calibration needs at "
                                                       "least 10 real photos"),
        (quantize_cli, ["--model", tiny_onnx, "--calibration", few, "--out", tmp_path / "q.onnx"],
         f"{few} has 3 photos; calibration needs at least 10 real photos"),
    ]
    for entry, argv, message in cases:
        code, _, err = run_tool(entry, argv, capsys)
        assert code == 2 and err.startswith("error: " + message), err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "q.onnx").exists()


def test_verification_photos_none_of_which_can_be_read_are_a_photos_error(tiny_checkpoint, tiny_onnx, tmp_path):
    from export.convert import PhotosError

    bad = tmp_path / "cat.jpg"
    bad.write_text("not a photo")
    with pytest.raises(PhotosError, match="none of the 1 verification photos could be read as images"):
        verify(tiny_checkpoint, tiny_onnx, [bad])


def test_quantize_cli_refuses_an_out_folder_before_quantizing(tiny_onnx, tmp_path, capsys):
    from export.quantize import cli as quantize_cli

    code, _, err = run_tool(quantize_cli, ["--model", tiny_onnx, "--calibration", tmp_path, "--out", tmp_path], capsys)
    assert code == 2 and err == (f"error: --out is the file to write, and {tmp_path} is a folder; give a file name, "
                                 f"e.g. --out {tmp_path / 'tiny-int8.onnx'}\n")
