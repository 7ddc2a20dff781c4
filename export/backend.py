"""What a :class:`~export.runtime.Classifier` needs from whatever runs its model.

Two backends implement :class:`Backend` side by side: :class:`export.onnx_backend.OnnxBackend`
(a local ONNX file in onnxruntime) and :class:`export.triton_client.TritonBackend` (a model on
a Triton Inference Server). Decoding, preprocessing, softmax, top-k and the OOD verdict stay
in the ``Classifier``, so both serve the same answers from the same float32 batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class ModelError(ValueError):
    """A model that cannot be served (missing, unreadable, unreachable, not ready, or not
    shaped like a petlens classifier); the message says what is wrong and what to do."""


class Backend(Protocol):
    """Runs one model. Attributes:

    - ``labels``: class names, index order of the model's class outputs.
    - ``metadata``: the model's key/value metadata (the ONNX file's ``metadata_props``).
    - ``input_shape``: ``(3, S, S)``, one image without the batch axis.
    - ``outputs``: names of the model's outputs (``logits``, ``probabilities``, ``ood_score``).
    - ``providers``: where it runs, for logs and ``repr`` (onnxruntime providers, a server URL).
    """

    labels: list[str]
    metadata: dict[str, str]
    input_shape: tuple[int, int, int]
    outputs: tuple[str, ...]
    providers: list[str]

    def run(self, names: Sequence[str], batch: np.ndarray) -> list[np.ndarray]:
        """The outputs ``names`` for a float32 C-contiguous batch ``[N, 3, S, S]``, each shaped
        as the ONNX model returns it (``[N, C]`` for class scores, ``[N]`` for ``ood_score``).
        Raises :class:`ModelError` when the model cannot answer."""
        ...
