"""Grad-CAM and feature maps: localization on composed photos, geometry, CLI, hostile input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from training import load_checkpoint
from training.explain import (
    DIM_OUTSIDE,
    STAGES,
    explain,
    feature_grid,
    get_args_parser,
    photo_box,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def disc_photo(size: tuple[int, int], center: tuple[int, int], radius: int, seed: int = 0) -> Image.Image:
    """The fixture's 'cat' (a warm disc) pasted at a known place on a noisy grey background."""
    w, h = size
    noise = np.random.default_rng(seed).integers(90, 166, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    cx, cy = center
    ImageDraw.Draw(img).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(230, 110, 30))
    return img


# Photo shapes: square, wide (the crop cuts left and right) and tall (it cuts top and bottom),
# so the test also proves the heat map is mapped back through resize + center-crop.
@pytest.mark.parametrize("size", [(224, 224), (400, 200), (240, 360)])
def test_gradcam_peak_falls_inside_the_patch(tiny, size):
    model, labels = tiny
    left, top, right, bottom = photo_box(*size)
    radius = int(0.17 * (right - left))
    for k, (fx, fy) in enumerate([(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7), (0.5, 0.5)]):
        cx, cy = int(left + fx * (right - left)), int(top + fy * (bottom - top))
        photo = disc_photo(size, (cx, cy), radius, seed=k)
        result = explain(model, labels, photo, layers=())  # no grids: only the heat map matters here
        assert result.label == "cat"
        assert result.overlay.size == photo.size
        px, py = result.peak
        assert (px - cx) ** 2 + (py - cy) ** 2 <= radius**2, f"peak {result.peak} outside the disc at {(cx, cy)} r={radius}"


def test_overlay_is_photo_sized_and_dims_what_the_crop_cut_off(tiny):
    model, labels = tiny
    photo = disc_photo((400, 200), (200, 100), 30)
    result = explain(model, labels, photo)
    assert result.overlay.size == photo.size and result.overlay.mode == "RGB"
    # Resize 400x200 -> 512x256 (x1.28), crop 224 at (144, 16): in photo pixels that is
    # x in [112.5, 287.5), y in [12.5, 187.5), rounded half to even.
    assert result.box == (112, 12, 288, 188)
    assert result.cam.shape == (7, 7) and 0.0 <= result.cam.min() and result.cam.max() == pytest.approx(1.0)
    over, src = np.asarray(result.overlay, dtype=np.float32), np.asarray(photo, dtype=np.float32)
    dimmed = src * (1 - DIM_OUTSIDE) + 128 * DIM_OUTSIDE
    outside = np.ones(src.shape[:2], bool)
    outside[12:188, 112:288] = False
    assert np.abs(over[outside] - dimmed[outside]).max() <= 1.0
    # Inside, the heat colour is mixed in: the crop is no longer the photo.
    assert np.abs(over[12:188, 112:288] - src[12:188, 112:288]).mean() > 10


@pytest.mark.parametrize("size", [(9, 9), (8, 30), (1000, 640)])
def test_overlay_size_matches_odd_photo_sizes(tiny, size):
    model, labels = tiny
    photo = Image.new("RGB", size, (120, 130, 140))
    result = explain(model, labels, photo, layers=("late",))
    assert result.overlay.size == size
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
    assert x0 <= result.peak[0] < x1 and y0 <= result.peak[1] < y1


def test_feature_grids_have_the_documented_shape(tiny):
    model, labels = tiny
    result = explain(model, labels, disc_photo((160, 128), (80, 64), 25))
    assert set(result.grids) == set(STAGES)
    for grid in result.grids.values():
        assert grid.size == (4 * 96 + 5 * 3, 4 * 96 + 5 * 3) and grid.mode == "RGB"


def test_feature_grid_ranks_channels_by_activation():
    acts = torch.zeros(5, 6, 6)
    acts[3] = torch.linspace(1, 2, 6).expand(6, 6)  # the most active channel: a left-to-right ramp
    grid = np.asarray(feature_grid(acts, channels=16, columns=3, tile=12, gap=2, numbers=False)).astype(int)
    assert grid.shape == (2 * 12 + 3 * 2, 3 * 12 + 4 * 2, 3)  # 5 channels -> 2 rows of 3
    first, second = grid[2:14, 2:14], grid[2:14, 16:28]
    assert np.abs(first[:, 0] - first[:, -1]).sum() > 100  # the ramp leads the grid
    assert (second == second[0, 0]).all()  # a dead channel is one flat colour


def test_explain_leaves_the_model_as_it_found_it(tiny):
    model, labels = tiny
    model.train()
    try:
        photo = disc_photo((160, 128), (60, 60), 25)
        with torch.inference_mode():  # serving code often runs under inference mode
            result = explain(model, labels, photo)
        assert model.training, "train/eval mode not restored"
        assert all(not m._forward_hooks for m in model.modules()), "a hook outlived the call"
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
    again = explain(model, labels, photo)
    assert again.prob == pytest.approx(result.prob, abs=1e-5) and np.allclose(again.cam, result.cam, atol=1e-5)


def test_chosen_label_and_unknown_label(tiny):
    model, labels = tiny
    photo = disc_photo((160, 128), (80, 64), 25)
    result = explain(model, labels, photo, label="dog")
    assert result.label == "dog"
    from training.presets import preprocess

    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(preprocess(photo))[None]), 1)[0]
    assert result.prob == pytest.approx(probs[1].item(), abs=1e-5)
    assert dict(result.top) == pytest.approx({"cat": probs[0].item(), "dog": probs[1].item()}, abs=1e-5)
    with pytest.raises(ValueError, match="cat, dog"):
        explain(model, labels, photo, label="horse")


def test_rgba_photo_is_composited_like_every_other_upload(tiny):
    model, labels = tiny
    rgba = Image.new("RGBA", (120, 100), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse((30, 20, 90, 80), fill=(230, 110, 30, 255))
    result = explain(model, labels, rgba)
    assert result.overlay.mode == "RGB" and result.overlay.size == (120, 100)
    # Transparent corners became white (then dimmed/heat-mixed), not black.
    assert np.asarray(result.overlay)[0, 0].min() > 100


def run_cli(monkeypatch, capsys, argv):
    from training import explain as module

    monkeypatch.setattr(sys, "argv", ["training.explain", *argv])
    code = 0
    try:
        module.cli()
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_and_outputs(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    photo = disc_photo((300, 200), (150, 100), 30)
    photo.save(tmp_path / "puss.jpg")
    code, out, err = run_cli(monkeypatch, capsys, ["--checkpoint", str(tiny_checkpoint), "--image", str(tmp_path / "puss.jpg"),
                                                   "--out", str(tmp_path / "out"), "--json"])
    assert code == 0, err
    record = json.loads(out.strip().splitlines()[-1])
    assert record["label"] == "cat" and 0.5 < record["prob"] <= 1.0 and record["seconds"] > 0
    assert set(record["outputs"]) == {"gradcam", *STAGES}
    assert Path(record["outputs"]["gradcam"]).name == "puss-gradcam.png"
    assert Image.open(record["outputs"]["gradcam"]).size == (300, 200)
    assert Path(record["outputs"]["middle"]).name == "puss-features-middle.png"

    code, out, _ = run_cli(monkeypatch, capsys, ["--checkpoint", str(tiny_checkpoint), "--image", str(tmp_path / "puss.jpg"),
                                                 "--out", str(tmp_path / "one"), "--layer", "late", "--label", "dog", "--json"])
    record = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and record["label"] == "dog" and set(record["outputs"]) == {"gradcam", "late"}


def hostile_files(tmp_path: Path) -> dict[str, Path]:
    files = {"empty": tmp_path / "empty.jpg", "text": tmp_path / "notes.png", "truncated": tmp_path / "cut.png",
             "missing": tmp_path / "nope.jpg"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("not a picture")
    good = tmp_path / "good.png"
    disc_photo((200, 150), (100, 75), 30).save(good)
    files["truncated"].write_bytes(good.read_bytes()[:400])
    return files


def test_cli_hostile_input_is_a_message_not_a_traceback(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    for name, path in hostile_files(tmp_path).items():
        code, out, err = run_cli(monkeypatch, capsys, ["--checkpoint", str(tiny_checkpoint), "--image", str(path),
                                                       "--out", str(tmp_path / "out"), "--json"])
        assert code == 2, name
        assert "Traceback" not in err and err.startswith("error: "), (name, err)
        assert json.loads(out.strip().splitlines()[-1])["error"], name
    good = tmp_path / "good.png"
    code, _, err = run_cli(monkeypatch, capsys, ["--checkpoint", str(tiny_checkpoint), "--image", str(good),
                                                 "--out", str(tmp_path / "out"), "--label", "horse"])
    assert code == 2 and "cat, dog" in err
    code, _, err = run_cli(monkeypatch, capsys, ["--checkpoint", str(good), "--image", str(good), "--out", str(tmp_path)])
    assert code == 2 and "checkpoint" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*.png")), "no output for unusable input"


def test_module_entry_point(tiny_checkpoint, tmp_path):
    """The real `python -m training.explain`: --help and a bad file."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    proc = subprocess.run([sys.executable, "-m", "training.explain", "--checkpoint", str(tiny_checkpoint),
                           "--image", str(bad), "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bad.jpg" in proc.stderr
    assert "--layer" in get_args_parser().format_help()


def test_cli_bomb_header_is_our_message_and_no_warning(tiny_checkpoint, tmp_path, monkeypatch, capsys, recwarn):
    """A PNG header declaring ~134 megapixels: one `error:` line, no Pillow warning text."""
    from tests.training.test_images import png_by_hand

    side = int((1.5 * Image.MAX_IMAGE_PIXELS) ** 0.5)
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_by_hand(side, side, idat=b""))
    code, out, err = run_cli(monkeypatch, capsys, ["--checkpoint", str(tiny_checkpoint), "--image", str(bomb),
                                                   "--out", str(tmp_path / "out")])
    assert code == 2 and out == ""
    assert err == f"error: image too large: {side}×{side} pixels, limit 60 megapixels. Resize it and send it again.\n"
    assert [str(w.message) for w in recwarn] == []


def test_cli_damaged_photo_is_one_line_in_our_words(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.jpg"
    disc_photo((400, 300), (200, 150), 40).save(good, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, out, err = run_cli(monkeypatch, capsys, ["--checkpoint", str(tiny_checkpoint), "--image", str(cut),
                                                   "--out", str(tmp_path / "out")])
    assert code == 2 and out == ""
    assert err == "error: cut.jpg is cut short (truncated) or damaged; re-save or re-send the photo.\n"
