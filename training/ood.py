""""That's not a pet": out-of-distribution scores for a trained classifier.

A cats-vs-dogs head calls every car, selfie and horse a cat or a dog, often at 99%: with two
classes, max-softmax, max-logit and energy all reduce to ``|logit_cat - logit_dog|``, the
confidence of a decision between two answers that may both be wrong. The evidence that a
photo is neither lives in the penultimate features, so the default score here is the
**kNN cosine distance** (Sun et al., "Out-of-Distribution Detection with Deep Nearest
Neighbors", ICML 2022, https://arxiv.org/abs/2204.06507)::

    score(x) = 1 - cos(f(x), k-th nearest training feature)      (higher = less pet-like)

It won by measurement on real photos (``python -m benchmarks.ood``; the figures, against
max-softmax, class-conditional Mahalanobis (tied covariance, Ledoit-Wolf shrinkage, on
L2-normalised features; Lee et al., 2018) and ViM, are in docs/is-it-a-pet.md). Mahalanobis is
kept as ``method="mahalanobis"`` and the logit baselines as ``"msp"`` / ``"energy"``. Results are
flat in ``k``, so the default ``k=10`` is not a fragile pick.

**Which features.** Fine-tuning buys a little accuracy and costs a lot of this: it pulls
every animal's features towards "cat" or "dog", and the same score on a fine-tuned model's own
features accepts far more non-pets. So when fine-tuning changed the backbone, the state keeps a
**reference**: the pretrained weights of the blocks from the first changed one on. The frozen
blocks before it run once and feed both the fine-tuned blocks (-> the class) and the reference
blocks (-> the features that are scored), so the classifier is untouched and the score sees
ImageNet's features again, at the price of running the late blocks twice (MobileNetV2: blocks
10-18). Without pretrained weights (random init) or in head mode (nothing changed) the model's
own features are scored.

The threshold is calibrated on validation photos (never on non-pets) as a split-conformal
quantile: with ``n`` validation scores it is the ``ceil((n+1) * target_tpr)``-th smallest,
so a new pet photo like the validation ones is accepted with probability >= ``target_tpr``.

**Three answers, not two.** A pet of a breed or in a setting the training photos barely hold
scores like a pet that is a little unusual, and so does a lynx or a bear: one threshold cannot
accept the first without the second (measured by leaving visual clusters of the training photos
out of the bank: ``python -m benchmarks.ood --holdout-clusters 12``). So a second, looser
conformal threshold (``refuse_tpr``, default 98% of validation pets) splits the verdict
(:func:`training.verdict.verdict`):

- ``"pet"``: score <= ``threshold`` -- the usual answer;
- ``"unsure"``: up to ``refuse_threshold`` -- "probably a dog, but unlike the photos I learned
  from": an answer with a caveat, for the shaggy dog and the lynx alike;
- ``"not_pet"``: above it -- "this doesn't look like a cat or a dog".

States fitted before this (no ``refuse_threshold``) answer in two ways as before; the measured
rates are in docs/is-it-a-pet.md.

Everything a scorer needs is one dict of tensors, floats and strings (:func:`fit_ood`,
:func:`reference_state`), so it lives in a checkpoint's ``extra["ood"]`` and loads with
``weights_only=True``; :class:`OODScorer` and :class:`ClassifierWithOOD` rebuild it as
modules of ONNX-exportable ops.

Example::

    pretrained = {k: v.clone() for k, v in model.trunk.state_dict().items()}  # before fine-tuning
    ...                                                                        # fine-tune
    ref = reference_state(model.trunk, pretrained)     # {} when nothing changed
    feats = ScoreFeatures(model, ref)                  # x -> (model features, scored features)
    state = fit_ood(train_scored, train_labels, val_scored) | ref
    save_checkpoint(path, model, labels, extra={"ood": state})
    scorer = ood_scorer_from_checkpoint(read_checkpoint(path))        # at serving time
    logits, scores = score_images(model, scorer, [photo])
    is_pet = scores <= scorer.threshold
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError
from .model import input_size

FORMAT = "petlens-ood/2"  # /2 added the optional reference blocks
READABLE_FORMATS = ("petlens-ood/1", FORMAT)
METHODS = ("knn", "mahalanobis", "energy", "msp")
MAX_BANK = 1024  # kNN: training features kept for the score (class-balanced)
TARGET_TPR = 0.95  # validation pets given the plain answer ("pet")
REFUSE_TPR = 0.98  # validation pets not refused ("pet" or "unsure"); see the module docstring


def _check_features(name: str, x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has {x.shape[1]} features per row, expected {dim}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x.detach().double().cpu()


def conformal_threshold(scores: torch.Tensor, target_tpr: float) -> float:
    """The ``ceil((n+1) * target_tpr)``-th smallest score (the largest when that overshoots).

    Accepting ``score <= threshold`` then keeps at least ``target_tpr`` of new in-distribution
    scores on average (split conformal prediction), where the plain empirical quantile of a
    small validation set falls a little short.
    """
    s = torch.sort(scores.double().flatten()).values
    rank = min(math.ceil((len(s) + 1) * target_tpr), len(s))
    return float(s[rank - 1])


def balanced_subset(labels: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Indices of at most ``limit`` rows, classes as even as the data allow (seeded)."""
    if len(labels) <= limit:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per = [torch.nonzero(labels == c).flatten()[torch.randperm(int((labels == c).sum()), generator=g)] for c in classes]
    picked, quota = [], limit
    for i, rows in enumerate(sorted(per, key=len)):  # small classes first, leftovers to the big ones
        take = min(len(rows), quota // (len(per) - i))
        picked.append(rows[:take])
        quota -= take
    return torch.sort(torch.cat(picked)).values


def ledoit_wolf(xc: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of centred rows ``xc`` and the shrinkage used."""
    n, p = xc.shape
    cov = xc.T @ xc / n
    mu = torch.trace(cov) / p
    target = mu * torch.eye(p, dtype=cov.dtype)
    delta2 = ((cov - target) ** 2).sum() / p
    beta2 = ((xc.pow(2).sum(1) ** 2).sum() - n * (cov**2).sum()) / (n * n) / p
    shrink = float(torch.clamp(beta2 / delta2, 0.0, 1.0)) if delta2 > 0 else 1.0
    return shrink * target + (1 - shrink) * cov, shrink


def fit_ood(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    *,
    target_tpr: float = TARGET_TPR,
    refuse_tpr: float | None = REFUSE_TPR,
    method: str = "knn",
    val_logits: torch.Tensor | None = None,
    k: int = 10,
    max_bank: int = MAX_BANK,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit an OOD scorer on penultimate features and calibrate its threshold.

    ``train_features [N, D]`` / ``train_labels [N]``: the training photos' pooled features
    (``model.embed``) and classes; ``val_features [M, D]``: held-out in-distribution photos,
    used only to place the thresholds: ``target_tpr`` of them get the plain "pet" answer, and
    ``refuse_tpr`` (>= ``target_tpr``; None: no middle answer) are not refused (:mod:`training.verdict`).
    ``method``: ``"knn"`` (default; ``k``-th neighbour cosine distance to a class-balanced
    bank of at most ``max_bank`` training features), ``"mahalanobis"`` (tied covariance with
    Ledoit-Wolf shrinkage on L2-normalised features, distance to the nearest class mean),
    or the logit baselines ``"energy"`` / ``"msp"`` (these need ``val_logits``).
    Returns a dict of tensors, numbers and strings (checkpoint ``extra["ood"]``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; choose one of: {', '.join(METHODS)}")
    if not 0.5 <= target_tpr < 1.0:
        raise ValueError(f"target_tpr must be in [0.5, 1), got {target_tpr}")
    if refuse_tpr is not None and not target_tpr <= refuse_tpr < 1.0:
        raise ValueError(f"refuse_tpr must be in [target_tpr, 1) = [{target_tpr}, 1), got {refuse_tpr}")
    train = _check_features("train_features", train_features)
    val = _check_features("val_features", val_features, train.shape[1])
    labels = torch.as_tensor(train_labels).long().flatten().cpu()
    if len(labels) != len(train):
        raise ValueError(f"{len(train)} training features but {len(labels)} labels")
    state: dict[str, Any] = {"format": FORMAT, "method": method, "feature_dim": int(train.shape[1])}
    if method == "knn":
        bank = F.normalize(train[balanced_subset(labels, max_bank, seed)], dim=1)
        state.update(k=int(min(k, len(bank))), bank=bank.float())
    elif method == "mahalanobis":
        z = F.normalize(train, dim=1)
        classes = labels.unique()
        means = torch.stack([z[labels == c].mean(0) for c in classes])
        cov, shrink = ledoit_wolf(z - means[torch.searchsorted(classes, labels)])
        # Store a whitening matrix W (precision = W W^T) so the score is a plain
        # matmul + squared norm in ONNX, without a matrix inverse at serving time.
        whiten = torch.linalg.cholesky(torch.linalg.inv(cov))
        state.update(means=means.float(), whiten=whiten.float(), shrinkage=shrink)
    else:
        if val_logits is None:
            raise ValueError(f"method {method!r} scores logits: pass val_logits")
        val_logits = _check_features("val_logits", val_logits)
    scorer = OODScorer(state)
    with torch.no_grad():
        logits = val_logits.float() if val_logits is not None else torch.zeros(len(val), 1)
        scores = scorer(val.float(), logits)
    threshold = conformal_threshold(scores, target_tpr)
    state.update(
        threshold=threshold,
        target_tpr=float(target_tpr),
        val_tpr=float((scores <= threshold).double().mean()),
        n_train=int(len(train)),
        n_val=int(len(val)),
    )
    if refuse_tpr is not None:
        refuse = conformal_threshold(scores, refuse_tpr)
        state.update(refuse_threshold=refuse, refuse_tpr=float(refuse_tpr),
                     val_not_refused=float((scores <= refuse).double().mean()))
    return state


def ood_summary(state: dict[str, Any]) -> dict[str, Any]:
    """The scalar facts of a fitted state (method, threshold, rates, counts), JSON-able:
    for ONNX metadata and metrics files, where a feature bank has no business."""
    return {key: value for key, value in state.items() if isinstance(value, (str, int, float, bool))}


class OODScorer(nn.Module):
    """``forward(features [N, D], logits [N, C]) -> score [N]``, higher = less like the
    training photos; accept a photo as in-distribution when ``score <= self.threshold``.

    ``refuse_threshold``: above it the answer is "not a pet", between the two "unsure"
    (:mod:`training.verdict`); None for states fitted before the middle answer existed.

    Built from :func:`fit_ood`'s dict; uses only ONNX-exportable ops (MatMul, TopK,
    ReduceSum, ReduceMin, LogSumExp, Softmax), so it can sit inside the exported model.
    """

    def __init__(self, state: dict[str, Any]):
        super().__init__()
        if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS or state.get("method") not in METHODS:
            raise ValueError(f"not an OOD state this version can use (expected format {FORMAT!r})")
        self.method = state["method"]
        self.feature_dim = int(state["feature_dim"])
        self.threshold = float(state.get("threshold", math.inf))
        self.target_tpr = float(state.get("target_tpr", float("nan")))
        refuse = state.get("refuse_threshold")
        self.refuse_threshold = None if refuse is None else float(refuse)
        if self.method == "knn":
            self.k = int(state["k"])
            self.register_buffer("bank", state["bank"].float())
        elif self.method == "mahalanobis":
            self.register_buffer("means", state["means"].float())
            self.register_buffer("whiten", state["whiten"].float())
        # Which features it scores: read by ClassifierWithOOD, not part of this module.
        self.reference = {key: state[key] for key in REFERENCE_KEYS if key in state}

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.method == "msp":
            return -torch.softmax(logits, dim=1).max(dim=1).values
        if self.method == "energy":
            return -torch.logsumexp(logits, dim=1)
        # x / max(||x||, eps), spelled out so it exports as plain ops.
        z = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.method == "knn":
            sims = z @ self.bank.T
            return 1.0 - torch.topk(sims, self.k, dim=1).values[:, -1]
        # Mahalanobis to the nearest class mean: (z - mu_c)' P (z - mu_c) = ||(z - mu_c) W||^2.
        diff = (z[:, None, :] - self.means[None]) @ self.whiten
        return (diff * diff).sum(dim=2).min(dim=1).values / self.feature_dim

    def extra_repr(self) -> str:
        return f"method={self.method!r}, threshold={self.threshold:.4g}"


def ood_scorer_from_checkpoint(ckpt: dict[str, Any]) -> OODScorer | None:
    """The scorer stored in a checkpoint dict (:func:`training.read_checkpoint`), or ``None``
    for checkpoints trained before OOD statistics existed."""
    state = (ckpt.get("extra") or {}).get("ood")
    if state is None:
        return None
    try:
        return OODScorer(state)
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint's 'is it a pet?' statistics lack {exc.args[0]!r}; refit them with "
                              "`python -m training.calibrate --model C --data DIR`") from exc


REFERENCE_KEYS = ("reference_from", "reference_weights")


def reference_state(trunk: nn.Sequential, pretrained: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What :class:`ScoreFeatures` needs to score pretrained features of a fine-tuned ``trunk``.

    ``pretrained``: the trunk's ``state_dict()`` before fine-tuning (same keys). Returns
    ``{"reference_from": i, "reference_weights": {...}}`` with ``i`` the first block whose
    weights or statistics changed and the pretrained tensors of blocks ``i..`` (``trunk``'s
    own key names), or ``{}`` when no block changed (head mode: its features already are
    the pretrained ones).
    """
    current = trunk.state_dict()
    if set(current) != set(pretrained):
        missing = sorted(set(current) ^ set(pretrained))
        raise ValueError(f"the pretrained weights do not fit this backbone (e.g. key {missing[0]!r})")
    names = [name for name, _ in trunk.named_children()]
    for i, name in enumerate(names):
        keys = [k for k in current if k.split(".", 1)[0] == name]
        if any(current[k].shape != pretrained[k].shape or not torch.equal(current[k].cpu(), pretrained[k].cpu()) for k in keys):
            later = set(names[i:])
            weights = {k: v.detach().cpu().clone() for k, v in pretrained.items() if k.split(".", 1)[0] in later}
            return {"reference_from": i, "reference_weights": weights}
    return {}


class ScoreFeatures(nn.Module):
    """``x [N, 3, H, W] in [0, 1] -> (features [N, D], scored features [N, D])``.

    ``features`` feed the model's head. ``scored`` are the same tensor, or, with a
    :func:`reference_state`, the pooled output of the pretrained blocks run on the shared
    frozen prefix: one pass through blocks ``< reference_from``, then both tails.
    """

    def __init__(self, model: nn.Module, reference: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.split = None
        self.reference = None
        if reference:
            self.split = int(reference["reference_from"])
            if not 0 <= self.split < len(model.trunk):
                raise ValueError(f"reference starts at block {self.split}, the backbone has {len(model.trunk)}")
            tail = copy.deepcopy(model.trunk[self.split:])
            try:
                tail.load_state_dict(reference["reference_weights"])
            except RuntimeError as exc:
                raise ValueError(f"the OOD reference blocks do not fit this backbone: {str(exc)[:300]}") from exc
            self.reference = tail.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        if self.reference is None:
            features = model.embed(x)
            return features, features
        shared = model.trunk[: self.split](model.normalize(x))
        features = torch.flatten(model.pool(model.trunk[self.split:](shared)), 1)
        return features, torch.flatten(model.pool(self.reference(shared)), 1)

    def train(self, mode: bool = True):  # the reference blocks stay in eval mode (BatchNorm)
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self


class ClassifierWithOOD(nn.Module):
    """``x [N, 3, H, W] in [0, 1] -> (logits [N, C], ood_score [N])`` in one graph, for export."""

    def __init__(self, model: nn.Module, scorer: OODScorer):
        super().__init__()
        self.features, self.scorer = ScoreFeatures(model, scorer.reference), scorer

    @property
    def model(self) -> nn.Module:
        return self.features.model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, scored = self.features(x)
        logits = self.model.head(features)
        return logits, self.scorer(scored.float(), logits)


@torch.inference_mode()
def score_images(model: nn.Module, scorer: OODScorer, images: Sequence | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, C]`` and OOD scores ``[N]`` for PIL photos or a ``[N, 3, H, W]`` batch in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        from .presets import preprocess_batch

        images = torch.from_numpy(preprocess_batch(images, input_size(model)))
    device = next(model.parameters()).device
    logits, scores = ClassifierWithOOD(model, scorer).eval()(images.to(device))
    return logits.float().cpu(), scores.float().cpu()


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """P(an out-of-distribution score exceeds an in-distribution one), ties counting half.

    Rank-based (Mann-Whitney U): O((n + m) log(n + m)) instead of comparing every pair, so a
    bootstrap over thousands of scores stays cheap."""
    a, b = torch.as_tensor(in_scores).double().flatten(), torch.as_tensor(out_scores).double().flatten()
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return float("nan")
    values, inverse, counts = torch.unique(torch.cat([a, b]), return_inverse=True, return_counts=True)
    # Midranks: tied values share the mean of the ranks they span (1-based).
    upper = torch.cumsum(counts, 0).double()
    midrank = upper - (counts.double() - 1) / 2
    rank_sum_out = midrank[inverse[n:]].sum()
    return float((rank_sum_out - m * (m + 1) / 2) / (n * m))


def ood_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor, threshold: float,
                refuse_threshold: float | None = None) -> dict[str, float]:
    """``{"auroc", "false_accept_rate", "true_accept_rate"}`` at ``threshold`` (accept = score <= it);
    with a ``refuse_threshold`` also ``"false_not_refused_rate"`` / ``"true_not_refused_rate"``:
    the shares not refused (answered "pet" or "unsure", :mod:`training.verdict`)."""
    a, b = torch.as_tensor(in_scores).double(), torch.as_tensor(out_scores).double()
    metrics = {
        "auroc": auroc(a, b),
        "false_accept_rate": float((b <= threshold).double().mean()),
        "true_accept_rate": float((a <= threshold).double().mean()),
    }
    if refuse_threshold is not None:
        metrics["false_not_refused_rate"] = float((b <= refuse_threshold).double().mean())
        metrics["true_not_refused_rate"] = float((a <= refuse_threshold).double().mean())
    return metrics
