""""Is it a pet?" as three answers, shared by torch (training.ood) and onnxruntime (export.runtime).

An out-of-distribution score (higher = less like the training photos) and two calibrated
thresholds give one of three verdicts (the reasons are in :mod:`training.ood`):

- ``"pet"``: at or under ``threshold`` -- the usual answer;
- ``"unsure"``: above it, at or under ``refuse_threshold`` -- an answer with a caveat ("probably
  a dog, but unlike the photos I learned from"): a breed or setting the training photos barely
  hold, or another furry animal;
- ``"not_pet"``: above ``refuse_threshold`` -- "this doesn't look like a cat or a dog".

No torch here: the onnxruntime side imports it.
"""

from __future__ import annotations

PET, UNSURE, NOT_PET = "pet", "unsure", "not_pet"
VERDICTS = (PET, UNSURE, NOT_PET)


def verdict(score: float, threshold: float, refuse_threshold: float | None = None) -> str:
    """``"pet"``, ``"unsure"`` or ``"not_pet"`` for ``score`` (see the module docstring).

    Without a ``refuse_threshold`` (models calibrated before the middle answer existed)
    there is no middle answer: above ``threshold`` is ``"not_pet"``."""
    if score <= threshold:
        return PET
    if refuse_threshold is not None and score <= refuse_threshold:
        return UNSURE
    return NOT_PET


def fooled(label: str, pet_verdict: str | None, target: str) -> bool:
    """Whether a photo's whole verdict is ``target``, as ``/classify`` would give it: that label,
    and the plain "pet" answer (``pet_verdict`` None: a model without "is it a pet?"
    statistics, where the label alone decides). "unsure" is not fooled: /classify would add
    that the photo is unlike the ones it learned from."""
    return label == target and pet_verdict in (None, PET)
