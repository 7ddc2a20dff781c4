"""The fit loop's phases as plain functions (torchvision-references style).

``train_one_epoch`` and ``evaluate`` take any module and loader: the full network on
image batches (fine-tune) or only the head on cached feature batches (head mode).
Counts are summed across DDP ranks, so every rank returns the whole dataset's numbers.

A model with a breed head trains as :class:`training.heads.BothHeads`: its output is the pair
``(logits, breed logits)`` and each target row is ``(label, breed)``, breed ``-1`` for a photo
without one; accuracy then means the first head's (the species), and :func:`evaluate` adds the
breed head's figures.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .distributed import all_gather_cat, all_reduce_sum


@dataclass
class Precision:
    """Mixed precision for one run: the autocast dtype (None = fp32) and, for fp16 only,
    a gradient scaler (bf16 has fp32's range and needs none)."""

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def choose(cls, device: torch.device, amp: str = "auto") -> Precision:
        """``auto``: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (CPU bf16
        is fast only on recent x86 chips; ask for it with ``bf16``)."""
        if amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"unknown --amp {amp!r}; choose auto, off, bf16 or fp16")
        if amp == "auto":
            if device.type != "cuda":
                return cls(device)
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if amp == "off":
            return cls(device)
        if amp == "fp16" and device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA GPU; on CPU use bf16 or off")
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return cls(device, dtype, scaler)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch; image batches go channels_last, which the conv kernels (cuDNN and
    oneDNN alike) run faster."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _summed(loss_sum: float, correct: int, n: int, device: torch.device) -> tuple[float, float, int]:
    t = all_reduce_sum(torch.tensor([loss_sum, float(correct), float(n)], dtype=torch.float64, device=device))
    loss_sum, correct, n = t.tolist()
    return loss_sum / max(n, 1), correct / max(n, 1), int(n)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    epoch: int,
    *,
    precision: Precision | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> EpochStats:
    """One pass over ``loader``; the caller sets train/eval mode (frozen BatchNorm stays
    in eval mode while the rest trains). ``scheduler`` steps per batch, and ``ema`` (a
    weight average of the unwrapped model) is updated after every optimizer step."""
    from tqdm.auto import tqdm

    precision = precision or Precision(device)
    loss_sum, correct, n = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc or f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
    for x, y in bar:
        x, y = to_device(x, device), y.to(device, non_blocking=True)
        with precision.autocast():
            outputs = model(x)
            loss = criterion(outputs, y)
        logits, labels = first_head(outputs, y)
        # One host-device sync per step for the finiteness check and the running figures.
        step_loss, step_correct = torch.stack([loss.detach().float(), (logits.argmax(1) == labels).sum().float()]).tolist()
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss became {step_loss} in epoch {epoch}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(getattr(model, "module", model))
        loss_sum += step_loss * y.shape[0]
        correct += int(step_correct)
        n += y.shape[0]
        bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct / n:.3f}")
    seconds = time.perf_counter() - start
    loss, acc, total = _summed(loss_sum, correct, n, device)
    return EpochStats(loss, acc, total, seconds)


def first_head(outputs, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first head's logits and labels: ``outputs``/``y`` themselves for a one-head model,
    ``outputs[0]``/``y[:, 0]`` for ``(logits, breed logits)`` and ``(label, breed)`` rows."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], y[:, 0]
    return outputs, y


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable,
    device: torch.device,
    num_classes: int,
    num_breeds: int = 0,
) -> dict:
    """Loss, accuracy and the confusion matrix (rows = true class, columns = predicted),
    summed over all ranks. Always in float32, the precision the model is exported and served
    in: under bf16 autocast a GPU run reported 96.5% for a model that scores 96.0% in fp32.

    With ``num_breeds`` (a :class:`~training.heads.BothHeads` model) also, over the photos that
    have a breed: ``breed_accuracy``, ``breed_top3``, ``breed_confusion``, ``n_breed``, and
    ``accuracy_with_breed`` / ``accuracy_without_breed`` (the first head's, on each part)."""
    model.eval()
    k = num_classes
    confusion = torch.zeros(k * k, dtype=torch.int64, device=device)
    # Per row: photos with a breed get the labels k.. in a second, breed-split confusion.
    split = torch.zeros(2 * k * k, dtype=torch.int64, device=device)
    breeds = torch.zeros(num_breeds * num_breeds, dtype=torch.int64, device=device)
    top3 = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    for x, y in loader:
        x, y = to_device(x, device), y.to(device, non_blocking=True)
        outputs = model(x)
        outputs = tuple(o.float() for o in outputs) if isinstance(outputs, (tuple, list)) else outputs.float()
        logits, labels = first_head(outputs, y)
        loss_sum += criterion(outputs, y).double() * y.shape[0]
        confusion += torch.bincount(labels * k + logits.argmax(1), minlength=k * k)
        if num_breeds:
            has = y[:, 1] >= 0
            split += torch.bincount(has.long() * k * k + labels * k + logits.argmax(1), minlength=2 * k * k)
            b, truth = outputs[1][has], y[has, 1]
            breeds += torch.bincount(truth * num_breeds + b.argmax(1), minlength=num_breeds**2)
            top3 += (b.topk(min(3, num_breeds), dim=1).indices == truth[:, None]).any(1).sum()
    for t in (confusion, loss_sum, split, breeds, top3):
        all_reduce_sum(t)
    confusion = confusion.view(k, k).cpu()
    n = int(confusion.sum())
    result = {
        "loss": loss_sum.item() / max(n, 1),
        "accuracy": confusion.trace().item() / max(n, 1),
        "n": n,
        "confusion": confusion,
        "seconds": time.perf_counter() - start,
    }
    if num_breeds:
        without, with_breed = split.view(2, k, k).cpu()
        breeds = breeds.view(num_breeds, num_breeds).cpu()
        n_breed = int(breeds.sum())
        result.update(
            breed_accuracy=breeds.trace().item() / max(n_breed, 1),
            breed_top3=int(top3) / max(n_breed, 1),
            breed_confusion=breeds,
            n_breed=n_breed,
            accuracy_with_breed=with_breed.trace().item() / max(int(with_breed.sum()), 1),
            accuracy_without_breed=without.trace().item() / max(int(without.sum()), 1),
            n_without_breed=int(without.sum()),
        )
    return result


@torch.inference_mode()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: torch.device,
    *,
    precision: Precision | None = None,
    progress: bool = False,
    desc: str = "features",
    feature_dim: int = 0,
    gather: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features of every image (``embed`` = ``model.embed``, or a
    compiled version of it; the caller puts the model in eval mode), gathered from all ranks
    (``gather=False``: this process's only, no collectives): ``([N, D] float32 on CPU, [N] labels)``. Head mode computes these once and trains the
    head on them, which is what makes it fast on a CPU."""
    from tqdm.auto import tqdm

    precision = precision or Precision(device)
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        with precision.autocast():
            feats.append(embed(to_device(x, device)).float())
        labels.append(y.to(device))
    # An empty shard (more ranks than images) still has to join the all_gather.
    f = torch.cat(feats) if feats else torch.zeros((0, feature_dim), device=device)
    y = torch.cat(labels) if labels else torch.zeros((0,), dtype=torch.int64, device=device)
    if not gather:
        return f.cpu(), y.cpu()
    return all_gather_cat(f).cpu(), all_gather_cat(y).cpu()


def set_trainable(model: nn.Module, unfreeze: str) -> list[nn.Module]:
    """Freeze the backbone except its late blocks (``late``) or nothing (``all``); the heads
    always train. Returns the trunk modules that train (for :func:`train_mode`).

    ``late`` = every trunk block after the ``middle`` stage (mobilenet_v2: blocks 10-18,
    resnets: layer4): the generic, low-level early features transfer as they are, and
    leaving them frozen halves the backward pass.
    """
    if unfreeze not in ("late", "all", "none"):
        raise ValueError(f"unknown unfreeze {unfreeze!r}; choose late, all or none")
    blocks = list(model.trunk.children())
    if unfreeze == "all":
        trainable = blocks
    elif unfreeze == "none":
        trainable = []
    else:
        middle = model.stages()["middle"]
        cut = next(i for i, b in enumerate(blocks) if b is middle or any(m is middle for m in b.modules()))
        trainable = blocks[cut + 1:]
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    for b in trainable:
        for p in b.parameters():
            p.requires_grad_(True)
    for head in heads(model):
        for p in head.parameters():
            p.requires_grad_(True)
    return trainable


def heads(model: nn.Module) -> list[nn.Module]:
    """The model's head and, when it has one, its breed head."""
    return [model.head] + ([model.breed_head] if model.breed_head is not None else [])


def train_mode(model: nn.Module, trainable: list[nn.Module], *, freeze_bn: bool = False) -> None:
    """Train mode for the heads and trainable blocks only: frozen blocks keep their
    ImageNet BatchNorm statistics (eval mode), which small datasets cannot re-estimate.
    ``freeze_bn``: the trainable blocks' BatchNorm stays in eval mode too (its scale and
    shift still train), for weights whose BatchNorm was folded away
    (:func:`training.model.has_folded_batchnorm`)."""
    model.eval()
    for head in heads(model):
        head.train()
    for b in trainable:
        b.train()
        if freeze_bn:
            for m in b.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
