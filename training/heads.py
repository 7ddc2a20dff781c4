"""Two answers from one network: the label head (the species: cat or dog) and the breed head.

The trunk's pooled features feed both heads (:meth:`training.model.PetClassifier.heads`). Each
training photo has a label; only some have a breed (a cat/dog photo set has none, a breed set
has both, the species following from the breed), so a target row is ``(label, breed)`` with
breed :data:`NO_BREED` where there is none, and the breed loss averages over the photos that
have one::

    net, criterion = BothHeads(model), HeadsLoss(label_smoothing=0.1)
    loss = criterion(net(x), y)          # y: LongTensor [N, 2]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NO_BREED = -1


class BothHeads(nn.Module):
    """``x -> (logits [N, C], breed logits [N, B])``: what the trainer differentiates (and DDP
    wraps) when the model has a breed head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.heads(x)


class HeadsLoss(nn.Module):
    """Cross-entropy of the label head over every photo plus that of the breed head over the
    photos with a breed (``y[:, 1] != NO_BREED``), both with ``label_smoothing``. A batch
    without any breed adds 0, not NaN, and no host-device sync is needed to tell."""

    def __init__(self, label_smoothing: float = 0.0, breed_weight: float = 1.0):
        super().__init__()
        self.label_smoothing, self.breed_weight = label_smoothing, breed_weight

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        logits, breed_logits = outputs
        loss = F.cross_entropy(logits, y[:, 0], label_smoothing=self.label_smoothing)
        per_photo = F.cross_entropy(breed_logits, y[:, 1], ignore_index=NO_BREED, reduction="none",
                                    label_smoothing=self.label_smoothing)
        has = (y[:, 1] != NO_BREED).sum().clamp_min(1)
        return loss + self.breed_weight * per_photo.sum() / has
