"""GGUF's codebook types -> ``Blocks``: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, TQ1_0, TQ2_0, MXFP4,
NVFP4.

Each of them stores a weight as a sub-block scale times a small integer taken from a codebook: a lattice point of
the grid with its sign bits (IQ2, IQ3: magnitudes up to 62), a grid value plus a +-1/8 shift (IQ1: eight times it is
an integer of -9..9), a ternary value (TQ: -1, 0, 1) or a doubled FP4 value (MXFP4, NVFP4: -12..12). So the weights are
exactly ``scale * q`` with integer codes ``q``: 8-bit ``MatMulNBits`` codes (4-bit for the ternary types) and one
float scale per sub-block, the same numbers as gguf-py's ``dequantize``.

Only the scales are decoded here (``_scales``: each type's bit layout of its sub-block scales, computed in float32 as
gguf-py computes them); the codes are gguf-py's dequantised weights divided by them (``rint(w / step)``; the grids
and sign tables stay gguf-py's). ``codebook_blocks`` then checks that its Blocks dequantise to exactly gguf-py's
weights: a scale decoded wrong is an ExportError here, never a silently different model.
"""
from __future__ import annotations

import numpy as np

from onnxlm.runtime.errors import ExportError

from .nbits import Blocks, _pack4, dequantize

QK_K = 256  # weights per super-block
#: type -> (bytes per block of ``BLOCK_WEIGHTS``, weights per scale, code step: scale / this, code bits)
CODEBOOK_TYPES = {"IQ2_XXS": (66, 32, 1, 8), "IQ2_XS": (74, 16, 1, 8), "IQ2_S": (82, 16, 1, 8),
                  "IQ3_XXS": (98, 32, 1, 8), "IQ3_S": (110, 32, 1, 8), "IQ1_S": (50, 32, 8, 8),
                  "IQ1_M": (56, 16, 8, 8), "TQ1_0": (54, 32, 1, 4), "TQ2_0": (66, 32, 1, 4), "MXFP4": (17, 32, 1, 8),
                  "NVFP4": (36, 16, 1, 8)}
BLOCK_WEIGHTS = {t: {"MXFP4": 32, "NVFP4": 64}.get(t, QK_K) for t in CODEBOOK_TYPES}


def _f16(raw: np.ndarray, offset: int) -> np.ndarray:
    """[N, nb, bytes] uint8 -> the fp16 at byte ``offset`` of each block as [N, nb] float32 (gguf_blocks' too)."""
    return raw[:, :, offset:offset + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _d(b: np.ndarray, at: int) -> np.ndarray:
    """[N, nb, bytes] uint8 -> the fp16 at byte ``at`` of each block as [N, nb, 1] float32: a super-block scale."""
    return _f16(b, at)[..., None]


def _nibbles(x: np.ndarray) -> np.ndarray:
    """[N, nb, m] uint8 -> [N, nb, 2m] float32: byte i's low nibble at 2i, its high one at 2i + 1."""
    return np.stack([x & 15, x >> 4], axis=-1).reshape(*x.shape[:-1], -1).astype(np.float32)


def _scales(b: np.ndarray, qtype: str) -> np.ndarray:
    """Blocks [N, nb, bytes] uint8 -> each sub-block's scale [N, nb, j] float32, as gguf-py's dequantize forms it."""
    half, quarter = np.float32(0.5), np.float32(0.25)
    if qtype == "IQ2_XXS":  # d, 8 x (4 grid indices, then signs + a 4-bit scale in the top bits of a uint32)
        aux = b[..., 2:66].copy().view(np.uint32)[..., 1::2]
        return _d(b, 0) * (half + (aux >> 28).astype(np.float32)) * quarter
    if qtype in ("IQ2_XS", "IQ2_S"):  # d, ..., 8 bytes of 4-bit scales at the end: per 16 weights
        return _d(b, 0) * (half + _nibbles(b[..., -8:])) * quarter
    if qtype == "IQ3_XXS":  # d, qs[64], 8 uint32 (signs + a 4-bit scale in the top bits)
        aux = b[..., 66:98].copy().view(np.uint32)
        return _d(b, 0) * (half + (aux >> 28).astype(np.float32)) * half
    if qtype == "IQ3_S":  # d, qs[64], qh[8], signs[32], 4 bytes of 4-bit scales
        return _d(b, 0) * (1 + 2 * _nibbles(b[..., 106:110]))
    if qtype == "IQ1_S":  # d, qs[32], 8 uint16 qh: bits 12-14 a 3-bit scale
        qh = b[..., 34:50].copy().view(np.uint16)
        return _d(b, 0) * (2 * ((qh >> 12) & 7) + 1).astype(np.float32)
    if qtype == "IQ1_M":  # qs[32], qh[16], 4 uint16: four 3-bit scales each, the fp16 d in their top nibbles
        sc = b[..., 48:56].copy().view(np.uint16)  # [N, nb, 4]
        d = ((sc & 0xF000) >> np.array([12, 8, 4, 0], np.uint16)).sum(axis=-1, dtype=np.uint16)  # disjoint bits
        d = d[..., None].view(np.float16).astype(np.float32)
        s = (sc[..., None] >> np.array([0, 3, 6, 9], np.uint16)) & 7  # [N, nb, 4, 4]
        return d * (2 * s.reshape(*sc.shape[:-1], 16) + 1).astype(np.float32)
    if qtype in ("TQ1_0", "TQ2_0"):  # ternary codes, then d: one scale per 256 weights (repeated per 32)
        return np.repeat(_d(b, b.shape[-1] - 2), QK_K // 32, axis=-1)
    if qtype == "NVFP4":  # 4 unsigned e4m3 scales (one per 16 weights, halved; 0x7F reads 0), 32 bytes of FP4 indices
        x = b[..., :4]
        exp, man = ((x >> 3) & 15).astype(np.float64), (x & 7).astype(np.float64)
        value = np.where(exp == 0, man * 2.0 ** -9, (1 + man / 8) * 2.0 ** (exp - 7))
        return np.where((x == 0) | (x == 0x7F), 0, value * 0.5).astype(np.float32)
    # MXFP4: an e8m0 exponent, 16 bytes of FP4 indices; gguf-py's ``e8m0_to_fp32_half``
    e = b[..., :1].astype(np.uint32)
    return np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << np.uint32(23)).astype(np.uint32).view(np.float32)


def codebook_blocks(raw: np.ndarray, qtype: str, n: int, k: int) -> Blocks:
    """A codebook type's tensor bytes [N, row bytes] uint8 (rows = output dim N) -> Blocks with 8-bit (ternary:
    4-bit) codes and one scale per sub-block, equal to gguf-py's dequantised weights (ExportError otherwise)."""
    import gguf

    nbytes, sub, step, bits = CODEBOOK_TYPES[qtype]
    weights = BLOCK_WEIGHTS[qtype]
    if k % weights:
        raise ExportError(f"GGUF {qtype} tensor with K={k}: not a multiple of its {weights}-weight blocks")
    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(n, k // sub, sub)  # [N, K/sub, sub]
    scale = _scales(raw.reshape(n, k // weights, nbytes), qtype).reshape(n, k // sub) / np.float32(step)
    safe = np.where(scale == 0, np.float32(1), scale)[..., None]
    q = np.rint(w / safe).astype(np.int16)
    offset = 8 if bits == 4 else 128
    if np.abs(q).max(initial=0) >= offset:
        raise ExportError(f"GGUF {qtype}: codes up to {int(np.abs(q).max())} do not fit {bits} bits")
    codes = (q + offset).astype(np.uint8)
    b = Blocks(bits, _pack4(codes) if bits == 4 else codes, scale, None, None, (qtype,), sub)
    if not np.array_equal(dequantize(b).reshape(w.shape), w):
        raise ExportError(f"GGUF {qtype}: its sub-block scales were misread (the codes are not integers); "
                          "a layout bug, please report it")
    return b
