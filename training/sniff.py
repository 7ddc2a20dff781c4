"""What a file given as a model is, by its first bytes, so a wrong one gets a plain answer.

People hand a tool the file next to the one it wants: the ONNX export where the torch
checkpoint goes (``--model models/catsdogs.onnx`` for ``petlens-explain``), the checkpoint
where the ONNX model goes, a photo, an empty download. :func:`file_kind` tells them apart
without torch or onnxruntime (both readers' own errors name only their internals).
"""

from __future__ import annotations

from pathlib import Path

from .images import sniff_format


def file_kind(path: str | Path) -> str:
    """``"torch"`` (the zip or pickle that ``torch.save`` writes), ``"onnx"``, ``"empty"``, an
    image format (``"PNG"``, ``"JPEG"``, ...) or ``"other"``. ``path`` must be a file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    # An ONNX ModelProto opens with field 1 (ir_version, a small varint), then one of fields 2-8.
    if path.suffix.lower() == ".onnx" or (len(head) > 2 and head[0] == 0x08 and head[1] < 0x20
                                          and head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42)):
        return "onnx"
    return sniff_format(head) or "other"
