"""Feature visualization: optimize an image so a network sees what you ask for.

After lucent's ``optvis`` (Olah et al., "Feature Visualization", Distill 2017), every
ingredient is a small swappable callable:

- a **parameterization** ``param_f() -> (params, image_f)``: :func:`fourier_image`
  optimizes the image's Fourier spectrum scaled by 1/f (so low frequencies move first and
  the image does not dissolve into high-frequency noise) in a decorrelated colour space;
- **objectives** that compose with ``+``, ``-`` and scalar ``*``: :func:`class_logit`,
  :func:`class_margin`, :func:`feature_direction` (closeness to a direction in
  penultimate feature space, with a cosine bonus), :func:`total_variation`;
- **transforms** applied before every step (:func:`pad`, :func:`jitter`,
  :func:`random_scale`, :func:`random_rotate`, :func:`random_blur`): an image that only
  works at one exact pixel alignment is noise; one that survives them is a picture;
- :func:`render` runs the loop and returns the image; nothing is saved or shown, no
  global state is touched (randomness comes from the ``torch.Generator`` you pass).

:mod:`training.ideal` puts them together for a checkpoint's labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .presets import as_rgb_uint8

Transform = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_STEPS = 256

# --------------------------------------------------------------- parameterization ---

# lucent's colour decorrelation: the square root of ImageNet's colour covariance.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


def _rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def fourier_image(
    size: int | tuple[int, int],
    *,
    batch: int = 1,
    sd: float = 0.01,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
):
    """Fourier-space image parameterization with 1/f scaling and decorrelated colour.

    Returns ``(params, image_f)``: ``image_f()`` gives ``[batch, 3, h, w]`` in (0, 1).
    """
    h, w = (size, size) if isinstance(size, int) else size
    freqs = _rfft2d_freqs(h, w)
    scale = (1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power).to(device)
    spectrum = torch.randn((batch, 3) + freqs.shape + (2,), generator=generator) * sd
    spectrum = spectrum.to(device).requires_grad_(True)
    color = _COLOR_SQRT.to(device)

    def image_f() -> torch.Tensor:
        coeffs = torch.view_as_complex(spectrum) * scale
        img = torch.fft.irfftn(coeffs, s=(h, w), norm="ortho") / 4.0  # lucent's "magic" 4
        if decorrelate:
            img = torch.einsum("nchw,dc->ndhw", img, color)
        return torch.sigmoid(img)

    return [spectrum], image_f


# ---------------------------------------------------------------------- objectives ---


class Objective:
    """A scalar to *maximize* from the step's outputs (``logits``, ``features``, ``image``).

    Compose them: ``class_margin(0) + 0.5 * feature_direction(w) - total_variation()``.
    """

    def __init__(self, fn: Callable[[dict], torch.Tensor], name: str):
        self.fn, self.name = fn, name

    def __call__(self, outputs: dict) -> torch.Tensor:
        return self.fn(outputs)

    def __add__(self, other: Objective) -> Objective:
        return Objective(lambda o: self(o) + other(o), f"{self.name} + {other.name}")

    def __sub__(self, other: Objective) -> Objective:
        return Objective(lambda o: self(o) - other(o), f"{self.name} - {other.name}")

    def __mul__(self, k: float) -> Objective:
        return Objective(lambda o: k * self(o), f"{k:g}·{self.name}")

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return Objective(lambda o: -self(o), f"-{self.name}")

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def class_logit(index: int) -> Objective:
    """The raw logit of class ``index`` (lucent's ``channel`` on the output layer)."""
    return Objective(lambda o: o["logits"][:, index].mean(), f"logit[{index}]")


def class_margin(index: int) -> Objective:
    """Log-probability of ``index`` against the others: raising it cannot be done by raising
    every logit at once, which is what a two-class model otherwise rewards."""
    return Objective(lambda o: F.log_softmax(o["logits"], 1)[:, index].mean(), f"logp[{index}]")


def feature_direction(direction: torch.Tensor, cossim_pow: float = 1.0) -> Objective:
    """Penultimate features along ``direction`` times their cosine to it to a power
    (lucent's ``direction`` with ``cossim_pow``): rewards *looking like* the label, not just
    scoring high. With ``direction`` = head weights of the label minus the others', the
    dot product is the logit margin (bias aside), so the objective is in logit units.
    """

    def fn(o: dict) -> torch.Tensor:
        f = o["features"]
        d = direction.to(f)
        dot = (f * d).sum(1)
        cos = F.cosine_similarity(f, d[None], dim=1).clamp(min=1e-4)
        return (dot * cos**cossim_pow).mean()

    return Objective(fn, "direction")


def total_variation(image: torch.Tensor | None = None) -> Objective | torch.Tensor:
    """Mean absolute difference between neighbouring pixels (an objective to subtract);
    called with a tensor, returns its value."""

    def tv(x: torch.Tensor) -> torch.Tensor:
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()

    if image is not None:
        return tv(image)
    return Objective(lambda o: tv(o["image"]), "tv")


# ---------------------------------------------------------------------- transforms ---


def _randint(lo: int, hi: int, g: torch.Generator | None) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _choice(values: Sequence, g: torch.Generator | None):
    return values[int(torch.randint(len(values), (1,), generator=g))]


def pad(w: int, value: float = 0.5) -> Transform:
    """Pad by ``w`` pixels of grey, so the borders are not special."""
    return lambda x: F.pad(x, (w, w, w, w), mode="constant", value=value)


def jitter(d: int, generator: torch.Generator | None = None) -> Transform:
    """Random crop that shifts the image by up to ``d`` pixels."""

    def t(x: torch.Tensor) -> torch.Tensor:
        dx, dy = _randint(0, d, generator), _randint(0, d, generator)
        return x[..., dy : x.shape[-2] - d + dy, dx : x.shape[-1] - d + dx]

    return t


def random_scale(scales: Sequence[float], generator: torch.Generator | None = None) -> Transform:
    """Resize by one of ``scales`` (antialiased bilinear)."""

    def t(x: torch.Tensor) -> torch.Tensor:
        s = _choice(scales, generator)
        size = (max(8, round(x.shape[-2] * s)), max(8, round(x.shape[-1] * s)))
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)

    return t


def random_rotate(degrees: Sequence[float], generator: torch.Generator | None = None) -> Transform:
    """Rotate by one of ``degrees`` about the centre (bilinear, borders reflected)."""

    def t(x: torch.Tensor) -> torch.Tensor:
        a = math.radians(_choice(degrees, generator))
        theta = x.new_tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    return t


def random_blur(sigmas: Sequence[float], generator: torch.Generator | None = None) -> Transform:
    """Gaussian blur with one of ``sigmas`` (0 = none): detail only the network can see
    must not carry the label on its own."""

    def t(x: torch.Tensor) -> torch.Tensor:
        s = float(_choice(sigmas, generator))
        if s <= 0:
            return x
        r = max(1, math.ceil(3 * s))
        k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2) / (2 * s * s))
        k = k / k.sum()
        c = x.shape[1]
        x = F.pad(x, (r, r, r, r), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    return t


def standard_transforms(generator: torch.Generator | None = None) -> list[Transform]:
    """lucent's defaults, plus an occasional blur (robustness that a person shares)."""
    return [
        pad(12),
        jitter(8, generator),
        random_scale([1 + (i - 5) / 50 for i in range(11)], generator),
        random_rotate(list(range(-10, 11)) + 5 * [0], generator),
        jitter(4, generator),
        random_blur([0, 0, 1, 2], generator),
    ]


# -------------------------------------------------------------------------- render ---


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Logits, and penultimate features when the model exposes ``embed``/``head``."""
    if hasattr(model, "embed") and hasattr(model, "head"):
        feats = model.embed(x)
        return {"features": feats, "logits": model.head(feats)}
    return {"logits": model(x)}


def render(
    model: torch.nn.Module,
    objective: Objective,
    param_f: Callable[[], tuple] | None = None,
    transforms: Sequence[Transform] | None = None,
    steps: int = DEFAULT_STEPS,
    *,
    lr: float = 0.05,
    input_size: int = 224,
    progress: Callable[[int, int, Callable[[], Image.Image]], None] | None = None,
) -> torch.Tensor:
    """Optimize an image to maximize ``objective``; returns ``[N, 3, H, W]`` in [0, 1].

    ``param_f() -> (params, image_f)`` (default :func:`fourier_image` at 224 px on the
    model's device); ``transforms`` run in order on each step's image (default
    :func:`standard_transforms`; ``[]`` for none) before it is resized to ``input_size``
    and fed to the model. Adam with ``lr``. The model's parameters and mode are left as
    they were. ``progress(step, steps, preview)``: ``preview()`` renders the current image.
    """
    device = next(model.parameters()).device
    params, image_f = (param_f or (lambda: fourier_image(224, device=device)))()
    transforms = standard_transforms() if transforms is None else list(transforms)
    optimizer = torch.optim.Adam(params, lr=lr)
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # gradients for the image only, none into the model
    try:
        for step in range(1, steps + 1):
            optimizer.zero_grad(set_to_none=True)
            image = image_f()
            x = image
            for t in transforms:
                x = t(x)
            if x.shape[-1] != input_size or x.shape[-2] != input_size:
                x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
            outputs = _outputs(model, x)
            outputs["image"] = image
            loss = -objective(outputs)
            loss.backward()
            optimizer.step()
            if progress is not None:
                progress(step, steps, lambda: to_pil(image_f().detach()))
        with torch.no_grad():
            return image_f().detach()
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)


def to_pil(images: torch.Tensor) -> Image.Image:
    """The first image of ``[N, 3, H, W]`` in [0, 1] as an 8-bit RGB PIL image."""
    return as_rgb_uint8(images[0].detach().float().cpu().numpy())
