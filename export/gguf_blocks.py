"""GGUF block types -> ``Blocks`` (onnxruntime's ``MatMulNBits`` form), the file's codes and scales kept.

Every type is read as integer codes ``q`` per weight, a float scale ``d`` per sub-block and either a fixed code
offset (``w = d*(q - c)``: Q4_0, Q5_0, Q8_0, Q3_K, Q6_K) or a float offset per sub-block (``w = d*q + m``: Q4_1,
Q5_1, Q2_K, Q4_K, Q5_K), exactly as gguf-py's ``dequantize`` computes them. IQ4_NL and IQ4_XS index a fixed table of
16 int8 values (``IQ4_KVALUES``) with 4-bit codes, ``w = d*table[i]``: the table's value is the code, in 8 bits
(the table is not evenly spaced, so no 4-bit code and scale give it), IQ4_XS's 6-bit sub-block scales folded into
``d`` as K-quants' are. The codebook types (IQ1-IQ3, TQ1_0, TQ2_0, MXFP4) are ``export/gguf_codebooks.py``'s:

* codes of 4 bits or fewer -> bits=4 (two per byte), 5 to 8 bits -> bits=8 (one byte each);
* a fixed offset -> the op's default zero point (8 / 128) with codes shifted to it;
* a float offset -> uint8 zero points ``z = clip(round(-m/d))`` and the exact correction ``R = m + z*d`` per block
  (``blocksum(x) @ R`` in the graph, as Q4_1 always had);
* the block size is the type's sub-block: 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, IQ4_NL, IQ4_XS), 16
  (Q2_K, Q3_K, Q6_K, whose scales are per 16 weights). K-quants' super-block scales (``d``, ``dmin``) are folded
  into the sub-block scales (``d * sc_j``, ``dmin * m_j``), the products gguf-py forms.

``stack`` puts a group's tensors (q/k/v, gate/up) into one ``Blocks``: at the smallest block size (``reblock``) and,
where 4- and 8-bit tensors meet (a Q4_K_M file's Q6_K attn_v beside Q4_K attn_q/k), in 8 bits (``to_8bit``: the
same weight, its 4-bit codes one byte each).
"""
from __future__ import annotations

import numpy as np

from onnxlm.runtime.errors import ExportError

from .gguf_codebooks import BLOCK_WEIGHTS as CODEBOOK_WEIGHTS
from .gguf_codebooks import CODEBOOK_TYPES, QK_K, _f16, codebook_blocks
from .nbits import BLOCK, Blocks, _pack4, reblock, to_8bit

#: type -> bytes per block of its ``BLOCK_WEIGHTS``
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34,
               "Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210, "IQ4_NL": 18, "IQ4_XS": 136}
BLOCK_WEIGHTS = {t: (QK_K if t.endswith("_K") or t == "IQ4_XS" else BLOCK) for t in BLOCK_BYTES}
#: type -> MatMulNBits bits of its codes: 4 for codes of 4 bits or fewer, 8 for 5 to 8 (and the IQ4 table's values)
CODE_BITS = {t: 8 if t in ("Q5_0", "Q5_1", "Q8_0", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS") else 4 for t in BLOCK_BYTES}
#: IQ4_NL / IQ4_XS: the int8 weight each 4-bit index stands for (llama.cpp's kvalues_iq4nl)
IQ4_KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int16)
BLOCK_BYTES |= {t: spec[0] for t, spec in CODEBOOK_TYPES.items()}  # IQ1-IQ3, TQ, MXFP4: export/gguf_codebooks.py
BLOCK_WEIGHTS |= CODEBOOK_WEIGHTS
CODE_BITS |= {t: spec[3] for t, spec in CODEBOOK_TYPES.items()}
NATIVE_TYPES = tuple(BLOCK_BYTES)


def _low_high(qs: np.ndarray) -> np.ndarray:
    """Nibbles [..., m] uint8 -> [..., 2, m]: the low nibbles of the m bytes, then the high ones."""
    return np.stack([qs & 15, qs >> 4], axis=-2)


def _bits_of(bytes_: np.ndarray, count: int) -> np.ndarray:
    """[..., m] uint8 -> [..., count, m]: bit i of each byte for i < count."""
    return (bytes_[..., None, :] >> np.arange(count, dtype=np.uint8)[:, None]) & 1


def _symmetric(q: np.ndarray, d: np.ndarray, block: int, qtype: str) -> Blocks:
    """Signed codes q [N, K] (the type's ``CODE_BITS``) and scales d [N, K/block]: w = d*q."""
    n, k = q.shape
    bits = CODE_BITS[qtype]
    codes = (q.astype(np.int16) + (8 if bits == 4 else 128)).astype(np.uint8).reshape(n, k // block, block)
    return Blocks(bits, _pack4(codes) if bits == 4 else codes, d.astype(np.float32), None, None, (qtype,), block)


def _asymmetric(q: np.ndarray, d: np.ndarray, m: np.ndarray, block: int, qtype: str) -> Blocks:
    """Codes q [N, K] uint8 below 2 ** the type's ``CODE_BITS``, scales d and offsets m [N, K/block]: w = d*q + m,
    as zero points z = clip(round(-m/d)) (so d*(q - z) stays close to w) and the exact correction R = m + z*d."""
    n, k = q.shape
    bits = CODE_BITS[qtype]
    safe = np.where(d == 0, 1, d)
    z = np.where(d == 0, 0, np.clip(np.round(-m / safe), 0, 2 ** bits - 1)).astype(np.uint8)
    r = (m.astype(np.float64) + z * d.astype(np.float64)).astype(np.float32)
    codes = q.astype(np.uint8).reshape(n, k // block, block)
    return Blocks(bits, _pack4(codes) if bits == 4 else codes, d.astype(np.float32), z, r, (qtype,), block)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's 12 scale bytes [N, nb, 12] -> 6-bit scales and mins [N, nb, 8] (gguf-py's get_scale_min)."""
    d, m, m_d = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def blocks_from_gguf(raw: np.ndarray, qtype: str, n: int, k: int) -> Blocks:
    """A GGUF tensor's bytes [N, K / block weights * block bytes] uint8 (rows = output dim N) -> Blocks."""
    if qtype not in BLOCK_BYTES:
        raise ExportError(f"GGUF type {qtype} has no native MatMulNBits form; native: {', '.join(NATIVE_TYPES)}")
    if qtype in CODEBOOK_TYPES:
        return codebook_blocks(raw, qtype, n, k)
    if k % BLOCK_WEIGHTS[qtype]:
        raise ExportError(f"GGUF {qtype} tensor with K={k}: not a multiple of its {BLOCK_WEIGHTS[qtype]}-weight blocks")
    b = raw.reshape(n, k // BLOCK_WEIGHTS[qtype], BLOCK_BYTES[qtype])  # [N, nb, bytes]
    flat = (lambda a: a.reshape(n, k))  # noqa: E731  codes [N, nb, ...] in weight order -> [N, K]
    per = (lambda a: a.reshape(n, -1))  # noqa: E731  sub-block scales [N, nb, j] -> [N, K / sub-block]
    if qtype == "Q4_0":  # d, 16 bytes of nibbles (weight j low, j+16 high); w = d*(q - 8)
        return _symmetric(flat(_low_high(b[..., 2:])).astype(np.int16) - 8, _f16(b, 0), BLOCK, qtype)
    if qtype == "Q4_1":  # d, m, nibbles; w = d*q + m
        return _asymmetric(flat(_low_high(b[..., 4:])), _f16(b, 0), _f16(b, 2), BLOCK, qtype)
    if qtype in ("Q5_0", "Q5_1"):  # d (, m), qh: bit j = weight j's 5th bit, nibbles
        at = 2 if qtype == "Q5_0" else 4
        qh = _bits_of(b[..., at:at + 4], 8).swapaxes(-1, -2).reshape(n, -1, 32)  # [N, nb, 32] weight j: bit j
        q = flat(_low_high(b[..., at + 4:]).reshape(n, -1, 32) | (qh << 4))
        if qtype == "Q5_0":  # w = d*(q - 16)
            return _symmetric(q.astype(np.int16) - 16, _f16(b, 0), BLOCK, qtype)
        return _asymmetric(q, _f16(b, 0), _f16(b, 2), BLOCK, qtype)
    if qtype == "Q8_0":  # d, 32 int8; w = d*q
        return _symmetric(flat(b[..., 2:].view(np.int8)), _f16(b, 0), BLOCK, qtype)
    if qtype == "IQ4_NL":  # d, 16 bytes of nibbles (as Q4_0); w = d*table[q]
        return _symmetric(IQ4_KVALUES[flat(_low_high(b[..., 2:]))], _f16(b, 0), BLOCK, qtype)
    if qtype == "IQ4_XS":  # d, scales_h (2 bits per sub-block), scales_l[4] (nibbles), qs[128]; per 32:
        d, high = _f16(b, 0), b[..., 2:4].copy().view(np.uint16)  # w = d*(s - 32)*table[q]
        low = _low_high(b[..., 4:8]).swapaxes(-1, -2).reshape(n, -1, 8)  # sub-block j: nibble j of the 4 bytes
        top = (high >> np.arange(0, 16, 2, dtype=np.uint16)) & 3  # [N, nb, 8]: bits 2j, 2j+1 of scales_h
        s = (low | (top.astype(np.uint8) << 4)).astype(np.float32) - 32
        q = _low_high(b[..., 8:].reshape(n, -1, 8, 16))  # [N, nb, 8, 2, 16]: sub-block j low, then high
        return _symmetric(IQ4_KVALUES[flat(q)], per(d[..., None] * s), BLOCK, qtype)
    if qtype == "Q2_K":  # scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin; per 16: w = d*sc*q - dmin*mn
        sc, qs, d, dmin = b[..., :16], b[..., 16:80], _f16(b, 80), _f16(b, 82)
        q = (qs.reshape(n, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3  # [N, nb, 2, 4, 32]
        return _asymmetric(flat(q), per(d[..., None] * (sc & 15)), per(-(dmin[..., None] * (sc >> 4))), 16, qtype)
    if qtype == "Q3_K":  # hmask[32], qs[64], scales[12] (6-bit, -32), d; per 16: w = d*(s - 32)*q, q in -4..3
        hmask, qs, scales, d = b[..., :32], b[..., 32:96], b[..., 96:108], _f16(b, 108)
        low = (scales[..., :8, None] >> np.array([0, 4], np.uint8)).swapaxes(-1, -2).reshape(n, -1, 16) & 15
        high = (scales[..., 8:, None] >> np.array([0, 2, 4, 6], np.uint8)).swapaxes(-1, -2).reshape(n, -1, 16) & 3
        s = ((low | (high << 4)).astype(np.int16) - 32).astype(np.float32)
        ql = (qs.reshape(n, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3  # [N, nb, 2, 4, 32]
        qh = _bits_of(hmask, 8).reshape(n, -1, 2, 4, 32) ^ 1  # the offset applies where the mask bit is 0
        return _symmetric(flat(ql.astype(np.int16) - (qh.astype(np.int16) << 2)), per(d[..., None] * s), 16, qtype)
    if qtype in ("Q4_K", "Q5_K"):  # d, dmin, scales[12] (8 x 6-bit scale/min), (qh[32],) qs[128]; per 32
        d, dmin = _f16(b, 0), _f16(b, 2)
        sc, mn = _k_scales(b[..., 4:16])
        qs = b[..., 16:] if qtype == "Q4_K" else b[..., 48:]
        q = _low_high(qs.reshape(n, -1, 4, 32))  # [N, nb, 4, 2, 32]: chunk c low -> sub-block 2c, high -> 2c+1
        if qtype == "Q5_K":
            q = q | (_bits_of(b[..., 16:48], 8).reshape(n, -1, 4, 2, 32) << 4)  # sub-block j: bit j of qh
        return _asymmetric(flat(q), per(d[..., None] * sc), per(-(dmin[..., None] * mn)), BLOCK, qtype)
    # Q6_K: ql[128], qh[64], scales[16] int8, d; per 16: w = d*sc*(q - 32), q 6-bit
    ql, qh, scales, d = b[..., :128], b[..., 128:192], b[..., 192:208].view(np.int8), _f16(b, 208)
    low = _low_high(ql.reshape(n, -1, 2, 64)).reshape(n, -1, 2, 4, 32)  # [N, nb, half, 4, 32]
    high = (qh.reshape(n, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3  # [N, nb, half, 4, 32]
    q = (low | (high << 4)).astype(np.int16) - 32
    return _symmetric(flat(q), per(d[..., None] * scales.astype(np.float32)), 16, qtype)


def stack(parts: list[Blocks]) -> Blocks:
    """Blocks stacked along N (q/k/v, gate/up): at the smallest block size, in 8 bits if any part is; a part without
    zero points gets the op's default (8 / 128) and R = 0."""
    size = min(p.block_size for p in parts)
    parts = [reblock(p, size) for p in parts]
    if len({p.bits for p in parts}) > 1:
        parts = [to_8bit(p) for p in parts]
    if len(parts) == 1:
        return parts[0]
    with_zp = any(p.zero_points is not None for p in parts)
    with_r = any(p.correction is not None for p in parts)
    default = 8 if parts[0].bits == 4 else 128
    return Blocks(parts[0].bits, np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]),
                  np.concatenate([p.zero_points if p.zero_points is not None
                                  else np.full(p.scales.shape, default, np.uint8) for p in parts]) if with_zp else None,
                  np.concatenate([p.correction if p.correction is not None else np.zeros_like(p.scales)
                                  for p in parts]) if with_r else None,
                  sum((p.types for p in parts), ()), size)
