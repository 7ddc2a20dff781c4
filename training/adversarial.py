"""Targeted adversarial photos: FGSM, PGD, and :func:`fool`, the /fool-me engine.

Attacks work on float ``[N, 3, H, W]`` images in [0, 1]; ImageNet normalization lives
inside the model (``training.model.Normalize``), so the L∞ budget ``eps`` is in pixel
units (``2/255`` = two grey levels). Shaped like torchattacks: pure functions, the model's
train/eval mode restored, gradients through :func:`torch.autograd.grad` so the model's own
``.grad`` buffers are never touched, the perturbation clamped to the eps-ball and the image
to [0, 1], the input never modified in place.

- :func:`fgsm`: one signed-gradient step (Goodfellow et al., "Explaining and Harnessing
  Adversarial Examples", 2015), for teaching.
- :func:`pgd`: iterated, projected steps (Madry et al., "Towards Deep Learning Models
  Resistant to Adversarial Attacks", 2018), targeted, with early stop once the target wins
  by ``margin`` logits. ``view`` puts a differentiable transformation between the image and
  the model (the classifier's resize + crop; random JPEG / downscale views for
  expectation over transformations, Athalye et al., "Synthesizing Robust Adversarial
  Examples", 2018).
- :func:`fool`: a user's photo -> the same photo, imperceptibly changed, that the model
  calls ``target``; judged the way a user receives it (8-bit, through the real
  preprocessing). See :mod:`training.fool` for the command line.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import load_image
from .jpeg import jpeg
from .model import PetClassifier, input_size
from .ood import ClassifierWithOOD, OODScorer
from .presets import CROP_SIZE, crop_box, preprocess, resize_size_for
from .verdict import verdict

MAX_SIDE = 1024  # longest side fool() works at; larger uploads are downscaled first
EPS_MIN, EPS_MAX = 1 / 255, 32 / 255  # below one grey level nothing survives 8-bit rounding
DEFAULT_STEPS = 50
DEFAULT_ROBUST_STEPS = 150
ROBUST_JPEG_QUALITIES = (60, 90)  # range of the differentiable JPEG views (wider than the check)
ROBUST_CHECK_QUALITY = 85  # the re-encoding a robust photo must survive

Progress = Callable[[int, int], None] | None


def target_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target logit minus the best other logit, per row (> 0: the target wins)."""
    tgt = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf"))
    return tgt - others.max(1).values


def _as_targets(target, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.long, device=device)
    return t.expand(n).clone() if t.ndim == 0 else t


def fgsm(model: torch.nn.Module, images: torch.Tensor, target, *, eps: float) -> torch.Tensor:
    """Targeted FGSM: one step of size ``eps`` *down* the cross-entropy towards ``target``.

    ``images``: ``[N, 3, H, W]`` in [0, 1]; ``target``: class index or ``[N]`` indices.
    Returns new images with ``|adv - images|∞ <= eps``. Example::

        adv = fgsm(model, x, target=0, eps=4 / 255)
    """
    return pgd(model, images, target, eps=eps, alpha=eps, steps=1, margin=None)


def pgd(
    model: torch.nn.Module,
    images: torch.Tensor,
    target,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    margin: float | None = 0.0,
    view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    accept: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    random_start: bool = False,
    progress: Progress = None,
) -> torch.Tensor:
    """Targeted L∞ PGD: minimize cross-entropy to ``target`` within ``eps`` of ``images``.

    ``images``: ``[N, 3, H, W]`` in [0, 1] (any size if ``view`` maps it to the model's
    input); ``target``: class index or ``[N]`` indices; ``alpha``: step size (default
    ``eps / 4``). ``view(x)`` returns the model input for ``x`` — ``[N*K, 3, h, w]`` for
    ``K`` views per image, averaged in the loss. Image ``i`` stops changing once the target
    wins every view by ``margin`` logits (``None``: never stop early) and, if given,
    ``accept(adv_i, i)`` agrees — use it to check what the user will really get (8-bit
    rounding, the real resize) and keep going when that breaks the attack.
    ``progress(step, steps)`` is called after each step. Returns ``adv`` with
    ``|adv - images|∞ <= eps``; ``images`` is not modified. Example::

        adv = pgd(model, x, target=0, eps=2 / 255, alpha=0.5 / 255, steps=20, margin=3.0)
    """
    if eps < 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    alpha = eps / 4 if alpha is None else alpha
    images = images.detach()
    n = images.shape[0]
    target = _as_targets(target, n, images.device)
    view = view or (lambda x: x)
    was_training = model.training
    model.eval()  # batch-norm statistics and dropout must not move while we attack
    try:
        adv = images.clone()
        if random_start:
            adv = (adv + torch.empty_like(adv).uniform_(-eps, eps)).clamp(0, 1)
        active = torch.ones(n, dtype=torch.bool, device=images.device)
        for step in range(1, steps + 1):
            adv.requires_grad_(True)
            logits = model(view(adv))
            k = logits.shape[0] // n
            tgt = target.repeat_interleave(k)
            if margin is not None:
                won = (target_margin(logits.detach(), tgt) >= margin).view(n, k).all(1) & active
                for i in won.nonzero()[:, 0].tolist():
                    if accept is None or bool(accept(adv[i : i + 1].detach(), i)):
                        active[i] = False
                if not active.any():
                    break
            loss = F.cross_entropy(logits, tgt, reduction="sum") / k
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                step_ = alpha * grad.sign() * active.view(n, 1, 1, 1)
                adv = adv.detach() - step_
                adv = torch.min(torch.max(adv, images - eps), images + eps).clamp(0, 1)
            if progress is not None:
                progress(step, steps)
        return adv.detach()
    finally:
        model.train(was_training)


def pgd_each(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    targets: Sequence[int],
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    margin: float | None = 0.0,
    views: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    accept: Callable[[torch.Tensor, int], bool] | None = None,
    progress: Progress = None,
    targets_to_model: bool = False,
    keep: Callable[[int], bool] | None = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """:func:`pgd` for photos of different sizes, in one loop: ``images[i]`` is
    ``[1, 3, H_i, W_i]`` and ``views[i]`` maps it to ``[K, 3, h, w]`` (the same ``K, h, w`` for
    all), so each step runs the model once on the stacked views of the photos still active.
    The loss is a sum over photos, so each photo's gradient is its own; each keeps its own
    eps-ball and stops on its own (``margin``, ``accept(adv_i, i)``, as in :func:`pgd`).
    ``targets_to_model``: call ``model(x, row_targets)`` (a model whose output depends on the
    target, such as :class:`_WholeVerdict`). ``keep(i)``, asked before each step: is photo ``i``
    still wanted? One whose caller gave up stops where it is and leaves the batch. Returns ``(advs, steps_taken)``: per photo, the
    adversarial image (``|adv - image|∞ <= eps``) and how many steps changed it."""
    if eps < 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    if not len(images) == len(targets) == len(views):
        raise ValueError(f"need one target and one view per image, got {len(images)}, {len(targets)}, {len(views)}")
    alpha = eps / 4 if alpha is None else alpha
    images = [x.detach() for x in images]
    adv = [x.clone() for x in images]
    targets = torch.as_tensor(list(targets), dtype=torch.long, device=images[0].device)
    active, taken = [True] * len(images), [0] * len(images)
    was_training = model.training
    model.eval()  # batch-norm statistics and dropout must not move while we attack
    try:
        for step in range(1, steps + 1):
            if keep is not None:
                active = [a and bool(keep(i)) for i, a in enumerate(active)]
            live = [i for i, a in enumerate(active) if a]
            if not live:
                break
            leaves = [adv[i].requires_grad_(True) for i in live]
            x = [views[i](leaf) for i, leaf in zip(live, leaves)]
            k = x[0].shape[0]
            tgt = targets[live].repeat_interleave(k)
            logits = model(torch.cat(x), tgt) if targets_to_model else model(torch.cat(x))
            if margin is not None:
                won = (target_margin(logits.detach(), tgt) >= margin).view(len(live), k).all(1)
                for i in (live[j] for j in won.nonzero()[:, 0].tolist()):
                    if accept is None or bool(accept(adv[i].detach(), i)):
                        active[i] = False  # its loss still counts below, but it is not moved
                if not any(active):
                    break
            loss = F.cross_entropy(logits, tgt, reduction="sum") / k
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                for i, g in zip(live, grads):
                    adv[i] = adv[i].detach()
                    if active[i]:
                        moved = adv[i] - alpha * g.sign()
                        adv[i] = torch.min(torch.max(moved, images[i] - eps), images[i] + eps).clamp(0, 1)
                        taken[i] += 1
            if progress is not None:
                progress(step, steps)
        return [a.detach() for a in adv], taken
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- the real pipeline ---


def classifier_view(height: int, width: int, crop_size: int = CROP_SIZE) -> Callable[[torch.Tensor], torch.Tensor]:
    """The eval preprocessing as a differentiable map ``[N, 3, height, width] -> [N, 3, crop, crop]``.

    Same geometry as :func:`training.presets.resize_and_crop` (``crop_box``); torch's
    antialiased bilinear resize matches Pillow's ``BILINEAR`` to within Pillow's own 8-bit
    rounding (< 1 grey level), so gradients point where the real pipeline goes.
    """
    new_w, new_h, left, top = crop_box(width, height, resize_size_for(crop_size), crop_size)

    def view(x: torch.Tensor) -> torch.Tensor:
        if (new_w, new_h) != (x.shape[-1], x.shape[-2]):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        return x[..., top : top + crop_size, left : left + crop_size]

    return view


def robust_view(height: int, width: int, views: int = 4, *, crop_size: int = CROP_SIZE,
                seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Expectation over transformations a re-shared photo goes through, then the classifier.

    Each call draws ``views`` versions of every image: as is, JPEG (quality 60-90, the
    differentiable approximation), downscaled to 45-60% (what chat apps and "save for
    web" do), and downscaled then JPEG'd; each then goes through :func:`classifier_view`.
    The draws come from a generator seeded with ``seed``: the same photo gives the same
    result, and the global RNGs are not touched.
    """
    lo_q, hi_q = ROBUST_JPEG_QUALITIES
    rng = np.random.default_rng(seed)

    def down(x: torch.Tensor) -> torch.Tensor:
        s = float(rng.uniform(0.45, 0.6))
        h, w = max(8, round(height * s)), max(8, round(width * s))
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return classifier_view(h, w, crop_size)(x)

    full = classifier_view(height, width, crop_size)
    kinds = [
        lambda x: full(x),
        lambda x: full(jpeg(x, float(rng.uniform(lo_q, hi_q)))),
        lambda x: down(x),
        lambda x: down(jpeg(x, float(rng.uniform(lo_q, hi_q)))),
    ]

    def view(x: torch.Tensor) -> torch.Tensor:
        out = [kinds[j % len(kinds)](x) for j in range(views)]
        return torch.stack(out, 1).flatten(0, 1)  # [N*K, 3, crop, crop], image-major

    return view


def reshare(image: Image.Image, how: str) -> Image.Image:
    """What a re-shared photo looks like: ``"png"`` (lossless), ``"jpeg"`` (quality 85),
    ``"half"`` (downscaled to 50%, Pillow bilinear)."""
    if how == "png":
        return image
    if how == "jpeg":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=ROBUST_CHECK_QUALITY)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if how == "half":
        return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.BILINEAR)
    raise ValueError(f"unknown re-share {how!r}; choose png, jpeg or half")


# --------------------------------------------------------------------------- fool() ---

PET_SLACK = 0.02  # the attack aims this far under the OOD threshold: 8-bit rounding and re-shares move the score
PET_WEIGHT = 30.0  # logits per unit of OOD score in the attack's "not a pet" competitor (~1 logit per 0.03)


@dataclass
class Judged:
    """What the deployed model says of one 8-bit image: the top label and its probability,
    and, for a model with "is it a pet?" statistics, the OOD score and whether it passes."""

    label: str
    prob: float
    ood_score: float | None = None
    is_pet: bool | None = None
    pet_verdict: str | None = None  # "pet", "unsure" or "not_pet" (training.verdict); None: not judged

    def fooled(self, target: str) -> bool:
        """The whole verdict ``/classify`` gives: the target label, and a pet (when judged)."""
        return self.label == target and self.is_pet is not False

    def __iter__(self):  # ``label, prob = verdict``, as FoolResult's (label, prob) pairs used to be
        return iter((self.label, self.prob))

    def __getitem__(self, i: int):
        return (self.label, self.prob)[i]

    def as_dict(self) -> dict:
        return {"label": self.label, "prob": round(self.prob, 6), "is_pet": self.is_pet,
                "ood_score": None if self.ood_score is None else round(self.ood_score, 6)}


@dataclass
class FoolResult:
    """What /fool-me hands back. Verdicts are from the 8-bit images, real preprocessing."""

    image: Image.Image  # 8-bit RGB, same size as the input (unless it was capped)
    source: Judged  # before
    result: Judged  # of the returned image
    linf: float  # max |adv - input| in [0, 1] units, measured on the 8-bit images
    steps: int
    seconds: float
    success: bool  # result is the target AND a pet (robust: also after JPEG q85 and a 50% downscale)
    resized_from: tuple[int, int] | None = None  # original (width, height) if it was capped
    reshared: dict[str, Judged] = field(default_factory=dict)  # robust checks


class _WholeVerdict(torch.nn.Module):
    """The classifier's logits plus one competitor, "not a pet": ``logit_t - margin -
    PET_WEIGHT * (threshold - PET_SLACK - ood_score)``. The target beats it by ``margin``
    exactly when the OOD score is ``PET_SLACK`` under the threshold, so one targeted margin
    (and pgd's early stop) asks for the target label *and* a photo accepted as a pet, and
    the cross-entropy pulls the score down while it matters. ``forward(x, target)``: a
    target per row (a batch of photos with different targets) in place of ``target``."""

    def __init__(self, net: ClassifierWithOOD, target: int | None, margin: float):
        super().__init__()
        self.net, self.target, self.margin = net, target, margin
        self.threshold = float(net.scorer.threshold)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        logits, score = self.net(x)
        logits = logits.float()
        pet = self.threshold - PET_SLACK - score.float()
        t = logits[:, self.target] if target is None else logits.gather(1, target[:, None])[:, 0]
        not_a_pet = t - self.margin - PET_WEIGHT * pet
        return torch.cat([logits, not_a_pet[:, None]], 1)


def _scorer(model: torch.nn.Module, ood) -> OODScorer | None:
    if ood == "auto":
        state = model.ood_state if isinstance(model, PetClassifier) else None
        return None if state is None else OODScorer(state)
    return ood


def check_eps(eps: float) -> float:
    """Validate an L∞ budget; returns it as a float."""
    eps = float(eps)
    if not math.isfinite(eps) or not EPS_MIN - 1e-9 <= eps <= EPS_MAX + 1e-9:
        raise ValueError(
            f"eps must be between 1/255 ({EPS_MIN:.4f}) and 32/255 ({EPS_MAX:.4f}), got {eps:.4g}: "
            "below one grey level nothing survives saving as an 8-bit image, above 32/255 the change is plain to see."
        )
    return eps


def fool(
    model: torch.nn.Module,
    labels: list[str],
    image,
    target: str,
    *,
    eps: float = 2 / 255,
    steps: int | None = None,
    robust: bool = False,
    max_side: int = MAX_SIDE,
    margin: float = 3.0,
    ood: OODScorer | str | None = "auto",
    seed: int = 0,
    progress: Progress = None,
) -> FoolResult:
    """Change ``image`` by at most ``eps`` per pixel so that the deployed model's whole
    verdict is ``target``: that label, and accepted as a pet.

    ``image``: a PIL image (or a path / bytes, decoded by :func:`training.images.load_image`).
    Uploads longer than ``max_side`` pixels are first downscaled to it (``resized_from``
    says so); otherwise the returned 8-bit image has exactly the input's width×height and
    differs from it by at most ``floor(eps·255)`` grey levels. The perturbation is
    optimized through the classifier's own resize + center crop, and success is checked
    on the rounded 8-bit image through the real preprocessing; if rounding breaks it, the
    attack keeps going. ``ood``: the "is it a pet?" scorer (``"auto"``: the model's own
    statistics, ``PetClassifier.ood_state`` as :func:`training.load_checkpoint` rebuilds it, or
    ``LoadedCheckpoint.ood_scorer()`` passed explicitly; ``None``: label only); with one,
    the OOD score is part of the objective (:class:`_WholeVerdict`) and success needs it at
    or under the threshold, as ``/classify`` judges. ``robust=True`` optimizes over JPEG
    re-encoding and downscaling as well and only stops when the photo also passes after
    JPEG quality 85 and a 50% downscale (use a larger eps, e.g. 8/255); ``seed`` fixes its
    random views. ``margin``: how many logits the target must win by (3 ≈ 95% for two
    classes). Unknown ``target`` or ``eps`` out of range: ``ValueError``; unusable image:
    ``training.images.ImageError``. One photo of :func:`fool_batch`.
    """
    return fool_batch(model, labels, [image], [target], eps=eps, steps=steps, robust=robust, max_side=max_side,
                      margin=margin, ood=ood, seed=seed, progress=progress)[0]


def fool_batch(
    model: torch.nn.Module,
    labels: list[str],
    images: Sequence,
    targets: Sequence[str] | str,
    *,
    eps: float = 2 / 255,
    steps: int | None = None,
    robust: bool = False,
    max_side: int = MAX_SIDE,
    margin: float = 3.0,
    ood: OODScorer | str | None = "auto",
    seed: int = 0,
    progress: Progress = None,
    keep: Callable[[int], bool] | None = None,
) -> list[FoolResult]:
    """:func:`fool` for several photos at once, in ONE attack loop: each step runs the model's
    forward and backward on the stacked classifier views of the photos still being attacked
    (photos differ in size; each photo's view maps it to ``[3, crop, crop]``), while each keeps
    its own perturbation, eps-ball, early stop and 8-bit checks. Same arguments as
    :func:`fool` (``targets``: one label per photo, or one for all); one result per photo, in
    order; every ``seconds`` is the whole batch's time. ``keep(i)``, asked before each step:
    is photo ``i`` still wanted (a server's caller may give up)? If not, it stops where it is.

    Photo by photo the results are those of :func:`fool` run alone -- same objective, same
    steps, same checks -- up to floating point: a batched convolution sums in another order
    than a single one, so a gradient component near zero can flip its sign and the pixels can
    differ by a grey level. Verdicts and the eps-ball are what holds (tests/training).
    """
    targets = [targets] * len(images) if isinstance(targets, str) else list(targets)
    if len(targets) != len(images):
        raise ValueError(f"got {len(images)} photos but {len(targets)} targets")
    for target in targets:
        if target not in labels:
            raise ValueError(f"unknown target {target!r}; this model knows: {', '.join(labels)}")
    eps = check_eps(eps)
    steps = steps if steps is not None else (DEFAULT_ROBUST_STEPS if robust else DEFAULT_STEPS)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if max_side < 32:
        raise ValueError(f"max_side must be at least 32 pixels, got {max_side}")
    start = time.perf_counter()
    device = next(model.parameters()).device
    photos = [_Photo.of(image, labels.index(target), max_side, eps, device) for image, target in zip(images, targets)]
    judge = _Judge.for_model(model, labels, ood, margin, robust)

    was_training = model.training
    model.eval()  # the verdicts below must be the deployed (eval-mode) model's
    try:
        sources = [judge.judge_all([p.image], p.target)[0][0] for p in photos]
        advs, taken = pgd_each(
            judge.attacked, [p.x for p in photos], [p.target for p in photos],
            eps=eps, alpha=eps / 10 if robust else max(eps / 8, 0.25 / 255), steps=steps, margin=margin,
            views=[_view(p.image, judge.size, robust, seed) for p in photos],
            accept=lambda adv, i: photos[i].accept(adv, judge), progress=progress, targets_to_model=judge.net is not None, keep=keep,
        )
        finals = [p.finish(adv, judge) for p, adv in zip(photos, advs)]
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    return [
        FoolResult(image=final, source=source, result=judged["png"], linf=p.linf(final), steps=n, seconds=seconds,
                   success=all(v.fooled(judge.labels[p.target]) for v in judged.values()),
                   resized_from=p.resized_from, reshared=judged if robust else {})
        for p, source, (final, judged), n in zip(photos, sources, finals, taken)
    ]


def _view(image: Image.Image, size: int, robust: bool, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The attack's differentiable path from this photo to the model (one per photo: robust
    views draw from their own seeded generator, so a photo's draws do not depend on its batch)."""
    if robust:
        return robust_view(image.height, image.width, crop_size=size, seed=seed)
    return classifier_view(image.height, image.width, size)


@dataclass
class _Judge:
    """The deployed model's verdicts on 8-bit images, through the real preprocessing, and the
    module the attack differentiates (the classifier, or it plus the "not a pet" competitor)."""

    model: torch.nn.Module
    labels: list[str]
    scorer: OODScorer | None
    net: torch.nn.Module | None
    margin: float
    checks: tuple[str, ...]
    size: int

    @classmethod
    def for_model(cls, model, labels, ood, margin: float, robust: bool) -> _Judge:
        scorer = _scorer(model, ood)
        device = next(model.parameters()).device
        net = None if scorer is None else ClassifierWithOOD(model, scorer).to(device).eval()
        return cls(model, list(labels), scorer, net, margin, ("png", "jpeg", "half") if robust else ("png",),
                   input_size(model))

    @property
    def attacked(self) -> torch.nn.Module:
        """What pgd differentiates: the logits, plus one "not a pet" logit per photo's target.
        In eval mode: pgd restores the mode it found, and a wrapper left in train mode would put
        the shared model's batch norms in train mode for the verdicts after it."""
        return self.model if self.net is None else _WholeVerdict(self.net, None, self.margin).eval()

    @torch.inference_mode()
    def judge_all(self, images: list[Image.Image], t: int) -> tuple[list[Judged], list[float]]:
        """The deployed verdict of each 8-bit image, and how far each is from being fooled into
        label ``t`` (>= margin: fooled with room to spare)."""
        device = next(self.model.parameters()).device
        batch = torch.from_numpy(np.stack([preprocess(im, resize_size_for(self.size), self.size) for im in images])).to(device)
        if self.net is None:
            logits, scores = self.model(batch).float().cpu(), None
        else:
            logits, scores = (v.float().cpu() for v in self.net(batch))
        probs = logits.softmax(-1)
        out, slack = [], []
        for i in range(len(images)):
            label_margin = float(target_margin(logits[i : i + 1], torch.tensor([t]))[0])
            label, prob = self.labels[int(probs[i].argmax())], float(probs[i].max())
            if scores is None:
                out.append(Judged(label, prob))
                slack.append(label_margin)
            else:
                score, s = float(scores[i]), self.scorer
                out.append(Judged(label, prob, score, score <= s.threshold, verdict(score, s.threshold, s.refuse_threshold)))
                # The pet part counts in the same units as the attack's competitor.
                slack.append(min(label_margin, self.margin + PET_WEIGHT * (s.threshold - score)))
        return out, slack

    def judge(self, image: Image.Image, t: int) -> tuple[dict[str, Judged], float]:
        """Verdicts of ``image`` as shared every way this mode checks, and the smallest slack."""
        found, slack = self.judge_all([reshare(image, how) for how in self.checks], t)
        return dict(zip(self.checks, found)), min(slack)


@dataclass
class _Photo:
    """One photo under attack: its pixels, budget and target, and the best 8-bit version seen."""

    image: Image.Image
    resized_from: tuple[int, int] | None
    x: torch.Tensor  # [1, 3, H, W] in [0, 1]
    x8: np.ndarray  # [H, W, 3] uint8
    target: int
    levels: int  # the budget in whole grey levels
    best_score: float = -math.inf
    best: tuple[Image.Image, dict[str, Judged]] | None = None

    @classmethod
    def of(cls, image, target: int, max_side: int, eps: float, device) -> _Photo:
        """Decode ``image`` and downscale it to ``max_side`` when longer."""
        image = load_image(image)
        resized_from = None
        if max(image.size) > max_side:
            resized_from = image.size
            s = max_side / max(image.size)
            image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.LANCZOS)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)[None].to(device)
        return cls(image, resized_from, x, np.asarray(image, dtype=np.uint8), target, int(math.floor(eps * 255 + 1e-6)))

    def to_8bit(self, adv: torch.Tensor) -> Image.Image:
        """Round to 8 bits, still within the budget in grey levels."""
        q = np.rint(adv[0].detach().cpu().numpy().transpose(1, 2, 0) * 255.0).astype(np.int16)
        x8 = self.x8.astype(np.int16)
        q = np.clip(q, x8 - self.levels, x8 + self.levels)
        return Image.fromarray(np.clip(q, 0, 255).astype(np.uint8), "RGB")

    def accept(self, adv: torch.Tensor, judge: _Judge) -> bool:
        """pgd's early stop: does the 8-bit image fool the model with room to spare (every
        re-shared version too, robust mode)? Keeps the best image seen either way."""
        image = self.to_8bit(adv)
        judged, score = judge.judge(image, self.target)
        if score > self.best_score:
            self.best_score, self.best = score, (image, judged)
        # Every re-shared version must win by the margin too (robust mode), which also buys
        # slack for re-encodings it was not checked against (other JPEG qualities, filters).
        return score >= judge.margin and all(v.fooled(judge.labels[self.target]) for v in judged.values())

    def finish(self, adv: torch.Tensor, judge: _Judge) -> tuple[Image.Image, dict[str, Judged]]:
        """The image to hand back: the final one, or an earlier one that came closer."""
        final = self.to_8bit(adv)
        judged, score = judge.judge(final, self.target)
        if self.best is not None and self.best_score > score:
            return self.best
        return final, judged

    def linf(self, image: Image.Image) -> float:
        return float(np.abs(np.asarray(image, dtype=np.int16) - self.x8.astype(np.int16)).max()) / 255.0
