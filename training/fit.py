"""The two training recipes: ``head`` (linear probe on cached features) and ``finetune``.

Both return the per-epoch history and the kept epoch's weights (``keep="best"``: highest val
accuracy, the breed head's for a model with breeds, ties to the lower val loss;
``keep="last"``: the last epoch, so val photos select nothing); the caller writes the
checkpoint and plots on rank 0. A model with a breed head trains both heads at once
(:mod:`training.heads`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .data import ImageDataset, Sample
from .distributed import DistInfo, ShardSampler
from .engine import Precision, evaluate, extract_features, heads, set_trainable, train_mode, train_one_epoch
from .heads import BothHeads, HeadsLoss
from .presets import CROP_RATIO, EvalPreset, TrainPreset

DEFAULTS = {  # per mode: (epochs, lr); the backbone trains at BACKBONE_LR_SCALE * lr
    "head": (20, 1e-3),
    "finetune": (10, 1e-3),
}
BACKBONE_LR_SCALE = 0.1
HEAD_WARM_START_EPOCHS = 10  # finetune: linear-probe epochs on cached features first
WEIGHT_DECAY = 1e-4
KEEP = ("best", "last")


@dataclass(frozen=True)
class TrainConfig:
    """What a fit needs to know beyond the model and the data; built once by the caller
    (``python -m training`` from its flags), never changed while training."""

    mode: str = "head"  # "head" or "finetune"
    epochs: int = DEFAULTS["head"][0]
    lr: float = DEFAULTS["head"][1]  # head learning rate; the backbone gets BACKBONE_LR_SCALE of it
    batch_size: int = 32  # per process
    label_smoothing: float = 0.1
    unfreeze: str = "late"  # finetune: "late" blocks or "all"
    workers: int = 0  # image-decoding processes per training process
    seed: int = 0
    compile: bool = False  # torch.compile the network
    keep: str = "best"  # which epoch's weights: "best" on val, or "last"
    freeze_bn: bool = False  # finetune: trained blocks' BatchNorm stays in eval mode (folded weights)
    crop_ratio: tuple[float, float] = CROP_RATIO  # finetune: RandomResizedCrop's aspect-ratio range

    def __post_init__(self) -> None:
        if self.mode not in DEFAULTS:
            raise ValueError(f"unknown mode {self.mode!r}; choose {' or '.join(DEFAULTS)}")
        if self.keep not in KEEP:
            raise ValueError(f"unknown keep {self.keep!r}; choose {' or '.join(KEEP)}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must be (low, high) with 0 < low <= high, got {self.crop_ratio}")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"epochs, lr and batch_size must be positive, got {self.epochs}, {self.lr}, {self.batch_size}")

    @classmethod
    def for_mode(cls, mode: str, *, epochs: int | None = None, lr: float | None = None, **options) -> TrainConfig:
        """``mode``'s recipe, its default epochs and learning rate where ``None``."""
        default_epochs, default_lr = DEFAULTS.get(mode, DEFAULTS["head"])
        return cls(mode=mode, epochs=epochs or default_epochs, lr=lr or default_lr, **options)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val: dict = field(default_factory=dict)
    best_state: dict = field(default_factory=dict)

    keep: str = "best"

    def observe(self, epoch: int, row: dict, val: dict, model: nn.Module) -> bool:
        """Record an epoch; keep its weights if it is the best so far (``keep="best"``; the breed
        head's accuracy decides for a model with breeds) or always (``keep="last"``)."""
        self.history.append(row)

        def key(v: dict) -> tuple[float, float]:
            return (v.get("breed_accuracy", v["accuracy"]), -v["loss"])

        if not self.best_val or self.keep == "last" or key(val) > key(self.best_val):
            self.best_epoch, self.best_val = epoch, val
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            return True
        return False


def make_loader(dataset, batch_size: int, info: DistInfo, *, train: bool, workers: int, seed: int,
                persistent: bool = False):
    """Train: shuffled (DistributedSampler under torchrun, reshuffled by ``set_epoch``);
    eval: each rank's contiguous shard, nothing padded. Pinned memory only helps GPU copies;
    ``persistent`` keeps the workers alive between epochs (for loaders used every epoch)."""
    if train and info.distributed:
        sampler = torch.utils.data.DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed)
    elif train:
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = ShardSampler(len(dataset), info.rank, info.world_size)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=workers > 0 and persistent,
        generator=torch.Generator().manual_seed(seed + info.rank),  # seeds the workers' RNGs
    )


def _set_epoch(loader, epoch: int) -> None:
    if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
        loader.sampler.set_epoch(epoch)


def _cosine_with_warmup(optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up (a fresh head's large gradients must not wreck pretrained
    features), then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _row(epoch: int, train, val: dict, lr: float) -> dict:
    row = {
        "epoch": epoch,
        "train_loss": round(train.loss, 5),
        "train_accuracy": round(train.accuracy, 5),
        "val_loss": round(val["loss"], 5),
        "val_accuracy": round(val["accuracy"], 5),
        "lr": lr,
        "seconds": round(train.seconds + val["seconds"], 2),
        "images_per_second": round(train.images_per_second, 1),
        "train_images": train.images,  # summed over all ranks
    }
    for key in ("breed_accuracy", "breed_top3", "accuracy_with_breed", "accuracy_without_breed"):
        if key in val:
            row[f"val_{key}"] = round(val[key], 5)
    return row


def _log(info: DistInfo, row: dict, best: bool) -> None:
    if info.is_main:
        breeds = ""
        if "val_breed_accuracy" in row:
            breeds = f" breed {row['val_breed_accuracy']:.2%} (top-3 {row['val_breed_top3']:.2%})"
        print(
            f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}  "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.2%}{breeds}  "
            f"{row['seconds']:.1f}s {row['images_per_second']:.0f} img/s{'  *' if best else ''}",
            flush=True,
        )


def _criterion(model, cfg: TrainConfig) -> nn.Module:
    if model.breed_head is not None:
        return HeadsLoss(label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


class _OnFeatures(nn.Module):
    """The model's heads alone, on pooled features: ``f -> logits`` or ``(logits, breed logits)``."""

    def __init__(self, model):
        super().__init__()
        self.head, self.breed_head = model.head, model.breed_head

    def forward(self, f: torch.Tensor):
        return self.head(f) if self.breed_head is None else (self.head(f), self.breed_head(f))


def cache_features(model, samples: Sequence[Sample], cfg: TrainConfig, info: DistInfo, precision: Precision, desc: str):
    """Eval-preset features of ``samples`` from the frozen backbone, on every rank."""
    model.eval()
    embed = torch.compile(model.embed) if cfg.compile else model.embed
    loader = make_loader(ImageDataset(samples, EvalPreset()), cfg.batch_size, info,
                         train=False, workers=cfg.workers, seed=cfg.seed)
    start = time.perf_counter()
    feats = extract_features(embed, loader, info.device, precision=precision, progress=info.is_main,
                             desc=desc, feature_dim=model.feature_dim)
    seconds = time.perf_counter() - start
    if info.is_main:
        print(f"{desc}: {len(samples)} images in {seconds:.1f}s ({len(samples) / seconds:.1f} img/s)", flush=True)
    return feats


def fit(model, train: Sequence[Sample], val: Sequence[Sample], cfg: TrainConfig, info: DistInfo,
        precision: Precision) -> FitResult:
    """Train ``model`` by ``cfg.mode``'s recipe (:func:`fit_head` or :func:`fit_finetune`)."""
    return (fit_head if cfg.mode == "head" else fit_finetune)(model, train, val, cfg, info, precision)


def fit_head(model, train: Sequence[Sample], val: Sequence[Sample], cfg: TrainConfig, info: DistInfo,
             precision: Precision) -> FitResult:
    """Frozen backbone: features are computed once (train images unaugmented), then only
    the linear head trains, for many cheap epochs."""
    set_trainable(model, "none")
    xtr, ytr = cache_features(model, train, cfg, info, precision, "features (train)")
    xva, yva = cache_features(model, val, cfg, info, precision, "features (val)")
    return fit_linear(model, (xtr, ytr), (xva, yva), cfg, info, precision, cfg.epochs)


def fit_linear(model, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor] | None,
               cfg: TrainConfig, info: DistInfo, precision: Precision, epochs: int, lr: float | None = None) -> FitResult:
    """Train the model's heads (``model.head``, and ``model.breed_head`` when it has one) on
    cached features. With ``val``, track the kept epoch (its weights land in
    ``result.best_state``); without, load the last weights into ``model``.

    The heads train on standardized features (like a scaled logistic regression: the
    same learning rate suits any backbone's feature scale, even a random one) and the
    scaling is folded into their weights afterwards, so the checkpoint is a plain model.
    """
    xtr, ytr = train
    mu, sd = xtr.mean(0), xtr.std(0)
    # A relative floor: constant features stay harmless, and tiny-but-informative ones
    # (a random trunk's are ~1e-9) are not drowned by an absolute epsilon.
    sd = sd.clamp_min(1e-3 * float(sd.max()) + 1e-30)
    xtr = (xtr - mu) / sd
    on_features = _OnFeatures(model)
    net = DDP(on_features, device_ids=[info.device] if info.device.type == "cuda" else None) if info.distributed else on_features
    train_loader = make_loader(torch.utils.data.TensorDataset(xtr, ytr), cfg.batch_size, info,
                               train=True, workers=0, seed=cfg.seed)
    if val is not None:
        val_loader = make_loader(torch.utils.data.TensorDataset((val[0] - mu) / sd, val[1]), 4 * cfg.batch_size,
                                 info, train=False, workers=0, seed=cfg.seed)
    params = [p for head in heads(model) for p in head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr or cfg.lr, weight_decay=WEIGHT_DECAY)
    scheduler = _cosine_with_warmup(optimizer, epochs * len(train_loader), warmup_steps=0)
    criterion = _criterion(model, cfg)
    result = FitResult(keep=cfg.keep)
    threads = torch.get_num_threads()
    # Batches of a few hundred numbers: on a busy CPU, waking a thread pool for each tiny
    # op costs more than the op itself (one thread ran ~20x faster on 2 shared cores).
    torch.set_num_threads(1)
    try:
        for epoch in range(1, epochs + 1):
            _set_epoch(train_loader, epoch)
            lr_now = optimizer.param_groups[0]["lr"]
            net.train()
            stats = train_one_epoch(net, criterion, optimizer, train_loader, info.device, epoch,
                                    precision=precision, scheduler=scheduler)
            if val is not None:
                val_res = evaluate(on_features, criterion, val_loader, info.device, len(model.head[-1].bias),
                                   model.num_breeds)
                row = _row(epoch, stats, val_res, lr_now)
                _log(info, row, result.observe(epoch, row, val_res, model))
    finally:
        torch.set_num_threads(threads)
    linears = [f"head.{len(model.head) - 1}"]
    if model.breed_head is not None:
        linears.append(f"breed_head.{len(model.breed_head) - 1}")
    if val is not None:
        for linear in linears:
            _fold_standardization(result.best_state, linear, mu, sd)
    else:
        state = model.state_dict()
        for linear in linears:
            _fold_standardization(state, linear, mu, sd)
        model.load_state_dict(state)
        if info.is_main:
            print(f"head warm start: {epochs} epochs on cached features, train accuracy {stats.accuracy:.2%}", flush=True)
    return result


def _fold_standardization(state: dict, linear: str, mu: torch.Tensor, sd: torch.Tensor) -> None:
    """``W((x - mu) / sd) + b`` == ``(W / sd) x + (b - (W / sd) mu)``."""
    w = state[f"{linear}.weight"] / sd.to(state[f"{linear}.weight"].device)
    state[f"{linear}.bias"] = state[f"{linear}.bias"] - w @ mu.to(w.device)
    state[f"{linear}.weight"] = w


def fit_finetune(model, train: Sequence[Sample], val: Sequence[Sample], cfg: TrainConfig, info: DistInfo,
                 precision: Precision) -> FitResult:
    """Linear probe, then fine-tune (LP-FT): the head first trains on cached features,
    then late backbone blocks + head train on augmented images (TrainPreset), the backbone
    at a tenth of the head's learning rate, with label smoothing, warm-up + cosine decay
    and an exponential moving average of the weights.

    Starting from a trained head means the first backbone updates follow useful gradients
    instead of a random head's, which distorts pretrained features less and generalises
    better off the training distribution (Kumar et al., "Fine-Tuning can Distort
    Pretrained Features and Underperform Out-of-Distribution", ICLR 2022).
    """
    if HEAD_WARM_START_EPOCHS:
        set_trainable(model, "none")
        cached = cache_features(model, train, cfg, info, precision, "features (head warm start)")
        fit_linear(model, cached, None, cfg, info, precision, HEAD_WARM_START_EPOCHS, lr=DEFAULTS["head"][1])
    trainable = set_trainable(model, cfg.unfreeze)
    num_classes, num_breeds = len(model.head[-1].bias), model.num_breeds
    both = (lambda m: BothHeads(m)) if num_breeds else (lambda m: m)
    net = both(model)
    if info.distributed:
        net = DDP(net, device_ids=[info.device] if info.device.type == "cuda" else None)
    fwd = torch.compile(net) if cfg.compile else net
    # Validate (and ship) an exponential moving average of the weights: it smooths out the
    # last mini-batches' noise, so the val curve and the best-epoch pick are steadier.
    # Its horizon is about one epoch; it starts from the warm-started model.
    decay = min(0.999, max(0.9, 1.0 - 1.0 / max(1, math.ceil(len(train) / (cfg.batch_size * info.world_size)))))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    # It is a bare model (no DDP): ranks hold val shards of unequal length, and DDP's
    # forward is a collective that would wait for the shorter rank.
    eval_fwd = torch.compile(both(ema.module)) if cfg.compile else both(ema.module)
    train_loader = make_loader(ImageDataset(train, TrainPreset(ratio=cfg.crop_ratio)), cfg.batch_size, info,
                               train=True, workers=cfg.workers, seed=cfg.seed, persistent=True)
    val_loader = make_loader(ImageDataset(val, EvalPreset()), 2 * cfg.batch_size, info,
                             train=False, workers=cfg.workers, seed=cfg.seed, persistent=True)
    backbone = [p for b in trainable for p in b.parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": [p for head in heads(model) for p in head.parameters()], "lr": cfg.lr},
         {"params": backbone, "lr": cfg.lr * BACKBONE_LR_SCALE}],
        weight_decay=WEIGHT_DECAY,
    )
    steps = cfg.epochs * len(train_loader)
    scheduler = _cosine_with_warmup(optimizer, steps, warmup_steps=len(train_loader))
    criterion = _criterion(model, cfg)
    result = FitResult(keep=cfg.keep)
    for epoch in range(1, cfg.epochs + 1):
        _set_epoch(train_loader, epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_mode(model, trainable, freeze_bn=cfg.freeze_bn)
        stats = train_one_epoch(fwd, criterion, optimizer, train_loader, info.device, epoch,
                                precision=precision, scheduler=scheduler, ema=ema, progress=info.is_main,
                                desc=f"epoch {epoch}/{cfg.epochs}")
        val_res = evaluate(eval_fwd, criterion, val_loader, info.device, num_classes, num_breeds)
        row = _row(epoch, stats, val_res, lr)
        _log(info, row, result.observe(epoch, row, val_res, ema.module))
    return result
