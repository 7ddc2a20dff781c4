"""A differentiable approximation of JPEG compression (baseline, 4:2:0, IJG tables).

Used by the robust /fool-me mode: the attack averages its loss over views of the photo,
one of them "what the photo looks like after someone re-shares it as a JPEG". Real JPEG is
not differentiable (it rounds DCT coefficients to integers); following Shin & Song,
"JPEG-resistant Adversarial Images" (NIPS 2017 workshop), the rounding is replaced by
``round(x) + (x - round(x))**3``, which has the same values at the integers and a useful
gradient everywhere. Everything else follows libjpeg: JFIF full-range YCbCr, 2×2 chroma
averaging, 8×8 DCT-II, the standard quantization tables scaled by quality the way
``jpeg_quality_scaling`` does, bilinear ("fancy") chroma upsampling.

It matches Pillow's encoder to within a grey level or two on natural images, which is all
an expectation-over-transformations attack needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU T.81 Annex K tables, row-major (libjpeg's std_luminance/chrominance_quant_tbl).
_LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA = [
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
]  # fmt: skip

_RGB_TO_YCBCR = [
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
]
_YCBCR_TO_RGB = [
    [1.0, 0.0, 1.402],
    [1.0, -0.344136, -0.714136],
    [1.0, 1.772, 0.0],
]


def quant_tables(quality: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Luma and chroma quantization tables ``[8, 8]`` for a JPEG ``quality`` in [1, 100]."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    tables = []
    for base in (_LUMA, _CHROMA):
        t = torch.tensor(base, dtype=torch.float32, device=device).view(8, 8)
        tables.append(torch.clamp(torch.floor((t * scale + 50.0) / 100.0), 1.0, 255.0))
    return tables[0], tables[1]


def _dct_matrix(device=None) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix ``D`` (coefficients = D @ block @ D.T)."""
    d = torch.empty(8, 8, dtype=torch.float32, device=device)
    for k in range(8):
        for n in range(8):
            c = math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)
            d[k, n] = c * math.cos(math.pi * (2 * n + 1) * k / 16)
    return d


def diff_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in value, with the gradient of ``3 (x - round(x))**2`` (Shin & Song)."""
    r = torch.round(x)
    return r + (x - r) ** 3


def _blocks_roundtrip(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """DCT, quantize, dequantize, inverse DCT of a ``[N, H, W]`` plane (H, W multiples of 8)."""
    n, h, w = plane.shape
    blocks = plane.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # [N, by, bx, 8, 8]
    coef = dct @ (blocks - 128.0) @ dct.T
    coef = diff_round(coef / table) * table
    blocks = dct.T @ coef @ dct + 128.0
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def jpeg(images: torch.Tensor, quality: float = 85.0) -> torch.Tensor:
    """Differentiably "save as JPEG and decode" ``images`` (``[N, 3, H, W]`` in [0, 1]).

    Returns a tensor of the same shape in [0, 1]. ``quality`` follows Pillow/libjpeg
    (1-100); chroma is subsampled 2×2, Pillow's default.

    Example::

        >>> x = torch.rand(1, 3, 64, 48, requires_grad=True)
        >>> jpeg(x, 85).shape
        torch.Size([1, 3, 64, 48])
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected [N, 3, H, W] images, got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    device = images.device
    luma_q, chroma_q = quant_tables(float(quality), device)
    dct = _dct_matrix(device)
    # libjpeg pads to whole MCUs (16×16 with 4:2:0) by repeating the edge pixels.
    ph, pw = (-h) % 16, (-w) % 16
    x = images * 255.0
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    ycc = torch.einsum("ij,njhw->nihw", x.new_tensor(_RGB_TO_YCBCR), x)
    y = ycc[:, 0]
    chroma = F.avg_pool2d(ycc[:, 1:], 2) + 128.0  # [N, 2, H/2, W/2]
    y = _blocks_roundtrip(y, luma_q, dct)
    hc, wc = chroma.shape[-2:]
    chroma = _blocks_roundtrip(chroma.reshape(n * 2, hc, wc), chroma_q, dct).reshape(n, 2, hc, wc)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False) - 128.0
    ycc = torch.cat([y.unsqueeze(1), chroma], 1)
    rgb = torch.einsum("ij,njhw->nihw", x.new_tensor(_YCBCR_TO_RGB), ycc)
    rgb = rgb[:, :, :h, :w]
    return rgb.clamp(0.0, 255.0) / 255.0
