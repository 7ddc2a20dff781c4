"""Model building: a torchvision backbone, a fresh head, ImageNet normalization inside.

Every model here takes float ``[N, 3, H, W]`` in [0, 1] and returns logits ``[N, C]``.
The pieces are kept apart so the rest of the product can reach them:

- ``model.normalize``: ImageNet mean/std, so callers never normalize by hand;
- ``model.trunk``: the convolutional backbone, ``[N, 3, H, W] -> [N, D, h, w]``;
- ``model.embed(x)``: pooled penultimate features ``[N, D]`` (head-mode cache, OOD);
- ``model.head``: dropout + linear, ``[N, D] -> [N, C]``;
- ``model.breed_head``: optional second head on the same features, ``[N, D] -> [N, B]``
  (``model.heads(x)`` returns both from one pass; ``forward`` stays the first head's logits);
- ``model.stages()``: the backbone split into early / middle / late blocks (explain).

``padding="tf"`` gives the trunk TensorFlow's "SAME" padding (:class:`TFSamePadConv2d`), for
weights converted from TensorFlow, which were trained with it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .presets import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD

ARCHS = (
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "resnet18",
    "resnet34",
    "resnet50",
)
PADDINGS = ("torch", "tf")


class WeightsError(ValueError):
    """A weights file that cannot be used for the requested architecture."""


class Normalize(nn.Module):
    """``(x - mean) / std`` with ImageNet statistics, as buffers so they export to ONNX."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TFSamePadConv2d(nn.Conv2d):
    """A strided convolution padded as TensorFlow's ``padding="SAME"`` does: just enough for
    ``ceil(size / stride)`` outputs, the odd pixel at the bottom/right (torchvision pads every
    side alike). On 224 px input MobileNetV2's five stride-2 3x3 convolutions get (0, 1) where
    torchvision gives (1, 1), which shifts every later feature by half a pixel: the TF-Lite
    ImageNet MobileNetV2 converted to torchvision's layout scores 80.7% top-1 on an ImageNet
    sample without it and 89.4% with it.

    The pad is computed from the static spatial size, so it is a constant, and torch's ONNX
    exporter folds it into the convolution's own (asymmetric) pads, ``[0, 0, 1, 1]``: no extra
    node, no extra cost. Parameter names are those of ``nn.Conv2d``: state dicts load unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, stride, kernel, dilation in zip(x.shape[-2:], self.stride, self.kernel_size, self.dilation):
            total = max((-(-int(size) // stride) - 1) * stride + (kernel - 1) * dilation + 1 - int(size), 0)
            pads[:0] = [total // 2, total - total // 2]  # F.pad wants the last axis first
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


def apply_tf_padding(trunk: nn.Module) -> list[str]:
    """Give every strided convolution with a kernel wider than 1 in ``trunk`` TensorFlow's
    "SAME" padding (:class:`TFSamePadConv2d`, in place); returns their names."""
    changed = []
    for name, module in trunk.named_modules():
        if type(module) is nn.Conv2d and max(module.stride) > 1 and max(module.kernel_size) > 1:
            module.__class__ = TFSamePadConv2d
            module.padding = (0, 0)
            changed.append(name)
    return changed


class PetClassifier(nn.Module):
    """Normalize -> trunk -> global average pool -> head (and the optional breed head).

    ``image_size``: the square side it was trained at (what the one preprocessing crops to);
    ``padding``: ``"torch"`` or ``"tf"`` (see :class:`TFSamePadConv2d`); ``ood_state``: the
    "is it a pet?" statistics its checkpoint carries (:mod:`training.ood`; a plain dict, not a
    submodule, so the state_dict stays the classifier's), None when there are none.
    """

    def __init__(self, arch: str, trunk: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.2, *,
                 num_breeds: int = 0, image_size: int = CROP_SIZE, padding: str = "torch"):
        super().__init__()
        self.arch = arch
        self.feature_dim = feature_dim
        self.image_size = int(image_size)
        self.padding = padding
        self.ood_state: dict | None = None
        self.normalize = Normalize()
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.breed_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_breeds)) if num_breeds else None

    @property
    def num_breeds(self) -> int:
        return 0 if self.breed_head is None else self.breed_head[-1].out_features

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv block's activations ``[N, D, h, w]``."""
        return self.trunk(self.normalize(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features ``[N, D]``."""
        return torch.flatten(self.pool(self.feature_map(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [N, C], breed logits [N, B])`` from one pass through the trunk."""
        if self.breed_head is None:
            raise ValueError("this model has no breed head (it was trained without --breeds)")
        features = self.embed(x)
        return self.head(features), self.breed_head(features)

    def stages(self) -> dict[str, nn.Module]:
        """The trunk's early / middle / late blocks, for feature maps and Grad-CAM."""
        blocks = list(self.trunk.children())
        if self.arch.startswith("resnet"):
            named = dict(self.trunk.named_children())
            return {"early": named["layer1"], "middle": named["layer3"], "late": named["layer4"]}
        n = len(blocks)
        return {"early": blocks[max(1, n // 6)], "middle": blocks[n // 2], "late": blocks[-1]}


def input_size(model: nn.Module) -> int:
    """The square side ``model`` takes: a :class:`PetClassifier`'s ``image_size``, else
    ImageNet's 224 (torchvision's own classifiers, e.g. for an ideal zebra)."""
    return model.image_size if isinstance(model, PetClassifier) else CROP_SIZE


def has_folded_batchnorm(module: nn.Module) -> bool:
    """Whether every BatchNorm in ``module`` has identity statistics (mean 0, variance 1 - eps
    or 1) and at least one a non-zero bias: weights converted from a graph where BatchNorm was
    folded into the convolutions. Such layers must stay in eval mode while fine-tuning: batch
    statistics would change what the pretrained layers compute."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return False
    identity = all(float(m.running_mean.abs().max()) == 0.0 and float((m.running_var - 1).abs().max()) <= 2 * m.eps
                   for m in norms)
    return identity and any(m.bias is not None and bool(m.bias.detach().abs().max() > 0) for m in norms)


def _torchvision_model(arch: str, weights: str | Path | None):
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    if weights == "imagenet":
        try:
            return torchvision.models.get_model(arch, weights="DEFAULT")
        except Exception as exc:  # offline, proxy, corrupt cache...
            raise WeightsError(
                f"could not get torchvision's ImageNet weights for {arch} ({exc.__class__.__name__}: {exc}). "
                "Without internet access, pass --weights PATH to a state dict in torchvision layout."
            ) from exc
    model = torchvision.models.get_model(arch, weights=None)
    if weights in (None, "none"):
        return model
    _load_backbone_state(model, arch, Path(weights))
    return model


def _load_backbone_state(model: nn.Module, arch: str, path: Path) -> None:
    """Load a torchvision-layout state dict into ``model``, ignoring classifier keys."""
    if path.is_dir():
        raise WeightsError(f"--weights {path} is a folder; give the weights file (a state dict in torchvision layout)")
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickling detail stays in the chain
        raise WeightsError(f"{path} is not a PyTorch state dict: torch cannot read it as one (not a file torch.save "
                           "wrote, damaged, or holding more than tensors).") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors.")
    head_prefixes = ("classifier.", "fc.")
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(head_prefixes)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            detail.append(f"{len(wrong_shape)} of the wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise WeightsError(
            f"{path} does not fit {arch}: keys {'; '.join(detail)}. "
            f"Pass weights saved from torchvision.models.{arch}, or --arch matching the file."
        )
    model.load_state_dict(state, strict=False)


def build_model(arch: str, num_classes: int, weights: str | Path | None = "none", dropout: float = 0.2, *,
                num_breeds: int = 0, image_size: int = CROP_SIZE, padding: str = "torch") -> PetClassifier:
    """A :class:`PetClassifier` for ``num_classes`` on a torchvision ``arch`` backbone.

    ``weights``: ``"imagenet"`` (torchvision's weights API, needs internet once),
    ``"none"`` (random init) or a path to a state dict in torchvision layout
    (``classifier.*`` / ``fc.*`` keys are ignored). ``num_breeds``: also a breed head of that
    many classes (0: none). ``padding``: ``"torch"`` or ``"tf"`` (TensorFlow's "SAME", for
    weights converted from TensorFlow; :class:`TFSamePadConv2d`).
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    if num_breeds == 1 or num_breeds < 0:
        raise ValueError(f"a breed head needs at least 2 breeds, got {num_breeds}")
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; choose {' or '.join(PADDINGS)}")
    tv = _torchvision_model(arch, weights)
    if arch.startswith("resnet"):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        trunk = nn.Sequential(OrderedDict((n, getattr(tv, n)) for n in names))
        feature_dim = tv.fc.in_features
    else:
        trunk = tv.features
        feature_dim = trunk[-1].out_channels if hasattr(trunk[-1], "out_channels") else _probe_dim(trunk)
    if padding == "tf":
        apply_tf_padding(trunk)
    return PetClassifier(arch, trunk, feature_dim, num_classes, dropout, num_breeds=num_breeds,
                         image_size=image_size, padding=padding)


def _probe_dim(trunk: nn.Module) -> int:
    with torch.no_grad():
        return trunk(torch.zeros(1, 3, 64, 64)).shape[1]
