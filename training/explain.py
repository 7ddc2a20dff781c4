"""Inside the network: feature-map grids and Grad-CAM for one photo.

Two views of what a checkpoint model "sees", both pure functions over the model and a
decoded photo (nothing is saved, no hook outlives a call, the model's mode is restored):

- :func:`feature_grids`: for the early / middle / late blocks of the backbone
  (:meth:`PetClassifier.stages`), the most active channels as a grid of small heat maps,
  like the VGG-16 feature-map figure of the transfer-learning lesson;
- :func:`grad_cam`: Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391) on
  the last conv block: the block's activations weighted by the spatially averaged gradient
  of the chosen logit, ReLU'd. With global-average pooling and a linear head this equals
  CAM (Zhou et al., 2016), so it shows where the evidence for the label sits.

The network only sees the eval center crop (``training.presets``), so :func:`explain`
maps the heat map back through the inverse of resize + center-crop and draws it on the
photo *at the photo's own size*; what the crop cut off is shown dimmed towards grey, with
no heat, because the network never looked there.

Example::

    model, labels = load_checkpoint("models/catsdogs.pt")
    result = explain(model, labels, load_image("rex.jpg"))
    result.label, result.prob          # ('dog', 0.98)
    result.overlay.save("rex-gradcam.png")

CLI::

    python -m training.explain --checkpoint models/catsdogs.pt --image rex.jpg --out out/ --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .checkpoint import load_checkpoint
from .cli import add_device, add_json, add_model, make_parser, out_folder, resolve_device, run
from .images import load_image
from .model import input_size
from .presets import CROP_SIZE, RESIZE_SIZE, crop_box, preprocess, resize_size_for

STAGES = ("early", "middle", "late")
DIM_OUTSIDE = 0.6  # share of mid-grey mixed into the parts of the photo the crop cut off


@dataclass
class Explanation:
    """What :func:`explain` returns.

    ``overlay``: Grad-CAM heat map over the photo, same size as the photo (RGB).
    ``label`` / ``prob``: the explained label and its softmax probability.
    ``grids``: feature-map grid per depth (``"early"``, ``"middle"``, ``"late"``).
    ``seconds``: wall time of the whole call.
    ``top``: every label with its probability, most likely first.
    ``cam``: the raw Grad-CAM map in [0, 1] on the network's grid (e.g. 7x7 of the crop).
    ``box``: the center crop in photo pixels ``(left, top, right, bottom)``.
    ``peak``: the heat map's maximum in photo pixels ``(x, y)``.
    """

    overlay: Image.Image
    label: str
    prob: float
    grids: dict[str, Image.Image]
    seconds: float
    top: list[tuple[str, float]] = field(default_factory=list)
    cam: np.ndarray | None = None
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    peak: tuple[int, int] = (0, 0)


@lru_cache(maxsize=4)
def _palette(name: str) -> list[int]:
    """A matplotlib colormap as a flat 256-entry PIL palette (so colouring runs in C)."""
    import matplotlib

    lut = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(lut * 255).astype(np.uint8).ravel().tolist()


def colorize(values: np.ndarray, cmap: str = "viridis") -> Image.Image:
    """A 2-D float array in [0, 1] -> RGB image through a matplotlib colormap."""
    index = Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), "L").convert("P")
    index.putpalette(_palette(cmap))
    return index.convert("RGB")


class _Taps:
    """Forward hooks on named modules that keep their outputs; removed on exit."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> _Taps:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._keep(name)))
        return self

    def _keep(self, name: str):
        def hook(_module, _inputs, output):
            self.outputs[name] = output

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def resolve_label(labels: Sequence[str], label: str | None) -> int | None:
    """Index of ``label`` in ``labels`` (``None`` stays ``None``); a readable ValueError otherwise."""
    if label is None:
        return None
    if label not in labels:
        raise ValueError(f"unknown label {label!r}; this model knows: {', '.join(labels)}")
    return list(labels).index(label)


def _forward(model: nn.Module, x: torch.Tensor, layers: Sequence[str], target: int | None):
    """One forward + one partial backward: logits, Grad-CAM on ``late``, stage outputs."""
    stages = model.stages()
    wanted = {name: stages[name] for name in set(layers) | {"late"}}
    was_training = model.training
    model.eval()  # dropout/batch-norm in train mode would explain a different function
    try:
        # inference_mode(False): callers often wrap serving code in inference_mode.
        with torch.inference_mode(False), torch.enable_grad(), _Taps(wanted) as taps:
            # Gradients flow from the input, so a frozen trunk (requires_grad=False) works,
            # and autograd.grad leaves every parameter's .grad untouched.
            x = x.detach().clone().requires_grad_(True)
            logits = model(x)
            index = int(logits[0].argmax()) if target is None else target
            acts = taps.outputs["late"]
            (grads,) = torch.autograd.grad(logits[0, index], acts)
    finally:
        model.train(was_training)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * acts).sum(dim=1))[0].detach()
    cam = cam / cam.max() if cam.max() > 0 else cam
    stage_outputs = {name: taps.outputs[name][0].detach() for name in layers}
    return logits[0].detach(), index, cam.float().cpu().numpy(), stage_outputs


def feature_grid(activations: torch.Tensor, *, channels: int = 16, columns: int = 4, tile: int = 96,
                 gap: int = 3, cmap: str = "viridis", numbers: bool = True) -> Image.Image:
    """The ``channels`` most active maps of ``activations [C, h, w]`` as one grid image.

    Channels are ranked by mean activation (what the block responds to most in this photo);
    each tile is scaled to its own range, so a weak but structured map stays visible.
    The grid is ``columns`` wide, tiles ``tile`` pixels square, on a white background.
    """
    acts = activations.float().cpu()
    order = acts.mean(dim=(1, 2)).argsort(descending=True)[:channels].tolist()
    rows = (len(order) + columns - 1) // columns
    grid = Image.new("RGB", (columns * tile + (columns + 1) * gap, rows * tile + (rows + 1) * gap), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(max(9, tile // 9)) if numbers else None
    for k, c in enumerate(order):
        a = acts[c].numpy()
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        img = colorize(a, cmap).resize((tile, tile), Image.BILINEAR)
        x, y = gap + (k % columns) * (tile + gap), gap + (k // columns) * (tile + gap)
        grid.paste(img, (x, y))
        if numbers:  # the channel index, so users can compare photos channel by channel
            draw.text((x + 3, y + 2), f"#{c}", fill="white", font=font, stroke_width=1, stroke_fill="black")
    return grid


def photo_box(width: int, height: int, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE):
    """The eval center crop in the photo's own pixels, as floats ``(left, top, right, bottom)``."""
    new_w, new_h, left, top = crop_box(width, height, resize_size, crop_size)
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy


def cam_on_photo(cam: np.ndarray, photo: Image.Image, *, cmap: str = "jet", resize_size: int = RESIZE_SIZE,
                 crop_size: int = CROP_SIZE):
    """Draw ``cam`` (on the crop's grid) over ``photo`` at the photo's size.

    Returns ``(overlay, heat, box)``: ``heat`` is the float map in photo pixels over the
    crop box ``box`` (ints). Inside the box the colour is mixed in with weight growing with
    the heat (0.2 .. 0.75), so cold regions keep the photo readable; outside the box the
    photo is dimmed towards grey and gets no colour.
    """
    w, h = photo.size
    fl, ft, fr, fb = photo_box(w, h, resize_size, crop_size)
    box = (int(round(fl)), int(round(ft)), max(int(round(fr)), int(round(fl)) + 1), max(int(round(fb)), int(round(ft)) + 1))
    bw, bh = box[2] - box[0], box[3] - box[1]
    # PIL's bilinear upscaling uses pixel centres (align_corners=False), the same convention
    # as the conv grid, so cell (i, j) lands on the patch of the crop it was computed from.
    heat = np.asarray(Image.fromarray(cam.astype(np.float32), "F").resize((bw, bh), Image.BILINEAR))
    heat = np.clip(heat, 0.0, 1.0)
    overlay = Image.blend(photo, Image.new("RGB", photo.size, (128, 128, 128)), DIM_OUTSIDE)
    inside = photo.crop(box)
    mask = Image.fromarray(np.rint((0.2 + 0.55 * heat) * 255).astype(np.uint8), "L")
    overlay.paste(Image.composite(colorize(heat, cmap), inside, mask), box[:2])
    return overlay, heat, box


def explain(model: nn.Module, labels: Sequence[str], image: Image.Image, *, label: str | None = None,
            layers: Sequence[str] = STAGES) -> Explanation:
    """Grad-CAM overlay and feature-map grids for one photo.

    ``model``: a :class:`training.model.PetClassifier` (takes [0, 1] RGB, returns logits);
    ``labels``: its class names; ``image``: a decoded PIL photo (any size; decode uploads
    with :func:`training.images.load_image`); ``label``: the class to explain, default the
    predicted one (unknown label -> ``ValueError`` naming the valid ones); ``layers``:
    which depths get a feature grid.
    """
    start = time.perf_counter()
    target = resolve_label(labels, label)
    bad = [name for name in layers if name not in STAGES]
    if bad:
        raise ValueError(f"unknown layer {bad[0]!r}; choose from: {', '.join(STAGES)}")
    if image.mode != "RGB":
        image = load_image(image)
    size = input_size(model)
    resize = resize_size_for(size)
    device = next(model.parameters()).device
    x = torch.from_numpy(preprocess(image, resize, size))[None].to(device)
    logits, index, cam, stage_outputs = _forward(model, x, layers, target)
    probs = torch.softmax(logits.float(), 0).cpu().tolist()
    overlay, heat, box = cam_on_photo(cam, image, resize_size=resize, crop_size=size)
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    grids = {name: feature_grid(stage_outputs[name]) for name in layers}
    top = sorted(zip(labels, probs), key=lambda kv: -kv[1])
    return Explanation(
        overlay=overlay, label=labels[index], prob=float(probs[index]), grids=grids,
        seconds=time.perf_counter() - start, top=top, cam=cam, box=box,
        peak=(int(px) + box[0], int(py) + box[1]),
    )


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = make_parser("petlens-explain", "Grad-CAM overlay and feature-map grids for one photo.", add_help=add_help)
    add_model(parser, aliases=("--checkpoint",), help="model checkpoint (.pt) written by `python -m training`")
    parser.add_argument("--image", required=True, help="the photo to explain (JPEG, PNG, WebP, GIF, BMP or TIFF)")
    parser.add_argument("--out", required=True, help="folder for <image stem>-gradcam.png and <image stem>-features-<layer>.png")
    parser.add_argument("--label", default=None, help="class to explain (default: the predicted one)")
    parser.add_argument("--layer", choices=STAGES, default=None,
                        help="write the feature-map grid of this depth only (default: all three)")
    add_device(parser)
    add_json(parser, help="print one JSON line with label, prob, outputs and seconds")
    return parser


def main(args: argparse.Namespace) -> dict:
    """Run the CLI; returns the JSON record. Unusable input raises ``ValueError``."""
    out = out_folder(args.out, contents="<photo name>-gradcam.png and <photo name>-features-<layer>.png")
    model, labels = load_checkpoint(args.model, device=resolve_device(args.device))
    resolve_label(labels, args.label)  # fail before decoding the photo
    image = load_image(args.image)
    layers = STAGES if args.layer is None else (args.layer,)
    result = explain(model, labels, image, label=args.label, layers=layers)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    outputs = {"gradcam": out / f"{stem}-gradcam.png"}
    result.overlay.save(outputs["gradcam"])
    for name, grid in result.grids.items():
        outputs[name] = out / f"{stem}-features-{name}.png"
        grid.save(outputs[name])
    record = {
        "image": str(args.image),
        "label": result.label,
        "prob": round(result.prob, 6),
        "top": [[k, round(p, 6)] for k, p in result.top],
        "peak": list(result.peak),
        "outputs": {k: str(v) for k, v in outputs.items()},
        "seconds": round(result.seconds, 4),
    }
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{stem}: {result.label} {result.prob:.1%} (Grad-CAM peak at x={result.peak[0]}, y={result.peak[1]}), "
              f"{result.seconds:.2f} s")
        for path in outputs.values():
            print(f"  wrote {path}")
    return record


def cli(argv: list[str] | None = None) -> int:
    """Console-script entry (``petlens-explain``): a user's mistake is one line on stderr, exit 2."""
    return run(get_args_parser(), main, argv)


if __name__ == "__main__":
    sys.exit(cli())
