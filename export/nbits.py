"""MatMulNBits / GatherBlockQuantized graph pieces shared by ``quantize.py`` and ``gguf_quant.py``.

``Blocks`` holds a weight in onnxruntime's ``MatMulNBits`` form (codes, one scale per block of ``BLOCK`` = 32 weights
along K, optional zero points and a Q4_1-style correction); ``q8_blocks`` quantizes an fp32 weight to it (8-bit,
symmetric: codes ``q+128``, scale ``max|w|/127`` per block, the layout of GGUF's Q8_0); ``dequantize`` is its
inverse. ``Rewriter`` builds the replacement nodes: ``matmul`` (``MatMulNBits``, optionally in two int8 passes
stacked into one call, ``split_int8``; a Q4_1-style correction through ``ReduceSum`` block sums; a big weight cut
by rows, ``row_parts``) and ``tied_embedding`` (``GatherBlockQuantized`` over aliases of an 8-bit head's bytes: a
tied embedding / output head stored once, ``mapped_weights.py``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .mapped_weights import ALIGN

HEAD_PART_BYTES = 48 << 20  # an output head with more code bytes is cut by rows (``row_parts``): onnxruntime
# reads each part's mapped bytes while it packs it and frees them after, so a 168 MB head (Gemma 3's 262,144 x 640)
# had put ~160 MB on the load's peak; in parts of <= 48 MiB the peak is one part (docs/benchmarks.md)
BLOCK = 32  # weights per block along K (GGUF's Q4_0, Q4_1, Q5_*, Q8_0, Q4_K, Q5_K; the 8-bit head of quantize.py)


@dataclass
class Blocks:
    """One or more weight tensors (stacked along N) in MatMulNBits form."""

    bits: int
    codes: np.ndarray  # [N, K/32, 32*bits/8] uint8 (4-bit: weight 2i in the low nibble, 2i+1 in the high one)
    scales: np.ndarray  # [N, K/32] float32
    zero_points: np.ndarray | None  # [N, K/32] uint8 unpacked, or None for the op's default (8 / 128)
    correction: np.ndarray | None  # R [N, K/32] float32 (w = scale*(code - zero point) + R), or None
    types: tuple  # the type of each stacked tensor (GGUF's name, e.g. "Q8_0")
    block_size: int = BLOCK  # weights per block along K (16 for GGUF's Q2_K, Q3_K, Q6_K; the "32" above)


def reblock(b: Blocks, size: int) -> Blocks:
    """The same weight in blocks of ``size`` (a divisor of ``b.block_size``): each block's scale, zero point and
    correction repeated over its parts (blocksum(x) @ R sums the same x whichever way the block is cut)."""
    if size == b.block_size:
        return b
    parts = b.block_size // size
    rep = (lambda a: None if a is None else np.repeat(a, parts, axis=1))
    n, kb, nbytes = b.codes.shape
    return Blocks(b.bits, b.codes.reshape(n, kb * parts, nbytes // parts), rep(b.scales), rep(b.zero_points),
                  rep(b.correction), b.types, size)


def to_8bit(b: Blocks) -> Blocks:
    """4-bit Blocks as 8-bit ones (one code byte per weight, the zero point made explicit): the same weight, for a
    group whose other parts are 8-bit (one MatMulNBits takes one bit width)."""
    if b.bits == 8:
        return b
    n, kb, _ = b.codes.shape
    codes = np.stack([b.codes & 15, b.codes >> 4], axis=-1).reshape(n, kb, -1).astype(np.uint8)
    zp = np.full((n, kb), 8, np.uint8) if b.zero_points is None else b.zero_points
    return Blocks(8, codes, b.scales, zp, b.correction, b.types, b.block_size)


def page_rows(n: int, row_bytes: list[int], part_bytes: int, align: int = ALIGN) -> list[tuple[int, int]]:
    """n rows stored in one or more tensors (``row_bytes``: a row's bytes in each; the first is sized against
    ``part_bytes``) -> row ranges [lo, hi) of at most ~``part_bytes`` each, every part but the last a multiple of
    the rows that fill whole ``align``-byte pages in every tensor (so the parts lie back to back at aligned offsets
    of ``mapped_weights``' file); [(0, n)] when one part suffices."""
    from math import gcd

    step = max(align // gcd(align, r) for r in row_bytes)  # rows: a power of two
    rows = max(step, part_bytes // row_bytes[0] // step * step)
    if rows >= n:
        return [(0, n)]
    return [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]


def row_parts(b: Blocks, part_bytes: int, align: int = ALIGN) -> list[tuple[int, int]]:
    """Row ranges [lo, hi) cutting ``b``'s N rows into parts of at most ~``part_bytes`` code bytes each, their
    codes, scales and zero points in whole ``align``-byte pages (``page_rows``)."""
    n, kb = b.scales.shape
    row_bytes = [b.codes[0].nbytes, kb * 4] + ([kb if b.bits == 8 else (kb + 1) // 2]
                                               if b.zero_points is not None else [])
    return page_rows(n, row_bytes, part_bytes, align)


def _pack4(q: np.ndarray) -> np.ndarray:
    """[..., 2m] uint8 values < 16 -> [..., m] uint8, element 2i low nibble, 2i+1 high (MatMulNBits' order)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def take_rows(b: Blocks, index) -> Blocks:
    """The rows ``index`` of ``b`` (a slice: views; an index array, e.g. a permutation: copies), every per-row array
    alike."""
    pick = (lambda a: None if a is None else a[index])
    return Blocks(b.bits, b.codes[index], b.scales[index], pick(b.zero_points), pick(b.correction), b.types,
                  b.block_size)


def dequantize(b: Blocks) -> np.ndarray:
    """Blocks -> the weight [N, K] float32 that MatMulNBits (+ the correction) computes with."""
    if b.bits == 4:
        lo, hi = b.codes & 15, b.codes >> 4
        q = np.stack([lo, hi], axis=-1).reshape(*b.codes.shape[:2], -1).astype(np.float32)  # [N, kb, 32]
        z = np.float32(8) if b.zero_points is None else b.zero_points[..., None].astype(np.float32)
    else:
        q = b.codes.astype(np.float32)
        z = np.float32(128) if b.zero_points is None else b.zero_points[..., None].astype(np.float32)
    w = b.scales[..., None] * (q - z)  # [N, kb, block_size]
    if b.correction is not None:
        w = w + b.correction[..., None]
    return w.reshape(w.shape[0], -1).astype(np.float32)


def q8_blocks(w: np.ndarray, kind: str = "q8") -> Blocks:
    """A weight [N, K] float32 (K a multiple of ``BLOCK``) -> 8-bit symmetric Blocks: per block of 32 along K,
    scale ``max|w|/127`` and codes ``round(w/scale) + 128`` (the op's default zero point 128)."""
    n, k = w.shape
    b = w.astype(np.float32).reshape(n, k // BLOCK, BLOCK)  # [N, K/32, 32]
    scales = np.abs(b).max(axis=-1) / np.float32(127)  # [N, K/32]
    safe = np.where(scales == 0, np.float32(1), scales)
    q = np.clip(np.rint(b / safe[..., None]), -127, 127)
    return Blocks(8, (q + 128).astype(np.uint8), scales.astype(np.float32), None, None, (kind,))


class Rewriter:
    """Builds MatMulNBits / GatherBlockQuantized replacement nodes and their initializers (``new_inits``) for
    ``graph``; counts the tensors it rewrites (``native``, by type) and those it leaves (``kept``)."""

    def __init__(self, graph, accuracy_level: int, opset: int = 17, to_array=None):
        from onnx import numpy_helper

        self.graph = graph
        self.opset = opset  # the graph's ai.onnx opset (ReduceMax takes its axes as an input from 18)
        self.fp32 = {i.name: i for i in graph.initializer}
        # TensorProto -> array; ``to_array`` where the graph's weights are still in its data file (views of it)
        self.to_array = to_array or numpy_helper.to_array
        self.from_array = numpy_helper.from_array
        self.accuracy_level = accuracy_level
        self.native, self.kept = Counter(), Counter()
        self.max_diff = 0.0
        self.new_inits = []
        self.aliases = {}  # placeholder initializer -> the initializer(s) whose bytes it shares (mapped_weights.py)
        self.parts = {}  # a MatMulNBits cut by rows (``part_bytes``) -> the names of its parts, in row order
        self.two_pass = set()  # the parts whose MatMulNBits read the stacked rows of a and x - a

    def level(self, name: str, bits: int) -> int:
        """The accuracy level of the MatMulNBits ``name``: 8-bit always 4 (level 1 is onnxruntime's slow path)."""
        return 4 if bits == 8 else self.accuracy_level

    def init(self, name: str, array: np.ndarray) -> str:
        self.new_inits.append(self.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list, outputs: list, name: str, domain: str = "", **attrs):
        from onnx import helper

        return helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs)

    def blocks_of(self, x: str, k: int, lead: int, name: str, block: int = BLOCK) -> tuple[list, str]:
        """x [*lead dims, K] -> (nodes, x viewed as [*lead dims, K/block, block])."""
        shape = self.inits_once(f"blocks_of_{k}_{block}_rank{lead + 1}",
                                np.array([0] * lead + [k // block, block], np.int64))
        return [self.node("Reshape", [x, shape], [f"{name}.x_blocks"], f"{name}.Blocks")], f"{name}.x_blocks"

    def split_int8(self, x: str, x_blocks: str, k: int, lead: int, name: str) -> tuple[list, str, str]:
        """x [*lead dims, K] (and its ``blocks_of`` view) -> (nodes, a, r): ``a`` = x rounded to int8 per block
        (the weight's block size) exactly as accuracy level 4 quantizes it (scale max|x|/127), so MatMulNBits reads ``a`` without error,
        and the remainder r = x - a (|r| <= scale/2, its own int8 error ~254x smaller than x's)."""
        c = lambda nm, v: self.inits_once(nm, np.array(v, np.float32))  # noqa: E731
        reduce = (("ReduceMax", [None, self.inits_once("last_axis", np.array([-1]))], dict(keepdims=1))
                  if self.opset >= 18 else ("ReduceMax", None, dict(axes=[-1], keepdims=1)))
        ops = [("Abs", [x_blocks], {}), reduce, ("Div", [None, c("int8_max", 127.0)], {}),
               ("Max", [None, c("tiny", 1e-30)], {})]
        nodes, prev = [], x_blocks
        for op, ins, attrs in ops:
            out = f"{name}.{op.lower()}"
            ins = [prev] if ins is None else [prev if i is None else i for i in ins]
            nodes.append(self.node(op, ins, [out], f"{name}.{op}", **attrs))
            prev = out
        scale = prev
        flat = self.inits_once(f"flat_{k}_rank{lead + 1}", np.array([0] * lead + [k], np.int64))
        nodes += [self.node("Div", [x_blocks, scale], [f"{name}.scaled"], f"{name}.Scale"),
                  self.node("Round", [f"{name}.scaled"], [f"{name}.rounded"], f"{name}.Round"),
                  self.node("Mul", [f"{name}.rounded", scale], [f"{name}.a_blocks"], f"{name}.Unscale"),
                  self.node("Reshape", [f"{name}.a_blocks", flat], [f"{name}.a"], f"{name}.A"),
                  self.node("Sub", [x, f"{name}.a"], [f"{name}.r"], f"{name}.R")]
        return nodes, f"{name}.a", f"{name}.r"

    def alias(self, name: str, sources: list[str], dims) -> str:
        """An initializer ``name`` of shape ``dims`` that shares the bytes of ``sources`` (one tensor, or row parts
        of one, stored back to back) in the saved file (``mapped_weights.save_mapped`` with ``self.aliases``)."""
        from .mapped_weights import alias

        made = {t.name: t for t in self.new_inits}
        self.new_inits.append(alias(name, [made.get(s) or self.fp32[s] for s in sources], dims))
        self.aliases[name] = list(sources)
        return name

    def inits_once(self, name: str, array: np.ndarray) -> str:
        if name not in {t.name for t in self.new_inits}:
            self.init(name, array)
        return name

    def matmul(self, x: str, b: Blocks, outputs: list[str], splits: list[int], name: str,
               two_pass: bool = False, lead: int = 2, part_bytes: int | None = None) -> list:
        """x [*lead dims, K] -> MatMulNBits (+ blocksum(x) @ R) -> outputs (a Split when ``splits`` has 2+ sizes).
        ``two_pass`` (at level 4): the rows of a and x - a (``split_int8``) stacked into one MatMulNBits ([2T, K] /
        [2b, s, K]: the weights are read once), its two halves added: close to fp32 activations. ``part_bytes``: a
        weight with more code bytes is cut by rows (N) into parts of at most that many (``row_parts``), one
        MatMulNBits each, their outputs concatenated: onnxruntime packs one part at a time (a big head's load
        peak)."""
        n, kb = b.scales.shape
        k = kb * b.block_size
        level = self.level(name, b.bits)
        y = outputs[0] if len(splits) == 1 and b.correction is None else f"{name}.nbits"
        attrs = dict(K=k, N=n, bits=b.bits, block_size=b.block_size, accuracy_level=level)
        two_pass = two_pass and level == 4
        if two_pass:
            self.two_pass.add(name.split(".")[-1])
        nodes, x_blocks = (self.blocks_of(x, k, lead, name, b.block_size) if two_pass or b.correction is not None
                           else ([], None))
        parts = row_parts(b, part_bytes) if part_bytes and b.correction is None else [(0, n)]
        if two_pass:
            split, a, r = self.split_int8(x, x_blocks, k, lead, name)
            nodes += split
            nodes += [self.node("Concat", [a, r], [f"{name}.ar"], f"{name}.Stack", axis=0),  # [2T, K] / [2b, s, K]
                      *self.nbits(f"{name}.ar", b, parts, f"{name}.yar", name, attrs),
                      self.node("Split", [f"{name}.yar"], [f"{name}.ya", f"{name}.yr"], f"{name}.Unstack", axis=0),
                      self.node("Add", [f"{name}.ya", f"{name}.yr"], [y], f"{name}.TwoPass")]
        else:
            nodes += self.nbits(x, b, parts, y, name, attrs)
        if b.correction is not None:  # + blocksum(x) [*lead dims, K/32] @ R [K/32, N]
            nodes += [self.node("ReduceSum", [x_blocks, self.inits_once("blocksum_axis", np.array([-1]))],
                                [f"{name}.blocksum"], f"{name}.BlockSum", keepdims=0),
                      self.node("MatMul", [f"{name}.blocksum", self.init(f"{name}.correction", b.correction.T)],
                                [f"{name}.corr"], f"{name}.Correction")]
            out = outputs[0] if len(splits) == 1 else f"{name}.sum"
            nodes.append(self.node("Add", [y, f"{name}.corr"], [out], f"{name}.AddCorrection"))
            y = out
        if len(splits) > 1:
            nodes.append(self.node("Split", [y, self.init(f"{name}.splits", np.array(splits, np.int64))],
                                   outputs, f"{name}.Split", axis=-1))
        for t in b.types:
            self.native[t] += 1
        return nodes

    def nbits(self, x: str, b: Blocks, parts: list[tuple[int, int]], y: str, name: str, attrs: dict) -> list:
        """x [..., K] -> y [..., N]: one MatMulNBits over ``b`` (initializers ``{name}.codes``, ``.scales``,
        ``.zero_points``), or one per row range of ``parts`` (``{name}.p{i}.codes``, ...) and a Concat."""
        kb = b.scales.shape[1]

        def inputs(prefix: str, lo: int, hi: int) -> list[str]:
            part = take_rows(b, slice(lo, hi))
            out = [x, self.init(f"{prefix}.codes", part.codes), self.init(f"{prefix}.scales", part.scales)]
            if part.zero_points is not None:
                zp = part.zero_points
                out.append(self.init(f"{prefix}.zero_points",
                                     zp if b.bits == 8 else _pack4(np.pad(zp, ((0, 0), (0, kb % 2))))))
            return out

        if len(parts) == 1:
            return [self.node("MatMulNBits", inputs(name, 0, b.scales.shape[0]), [y], name, "com.microsoft",
                              **attrs)]
        self.parts[name] = [f"{name}.p{i}" for i in range(len(parts))]
        nodes = [self.node("MatMulNBits", inputs(p, lo, hi), [f"{p}.y"], p, "com.microsoft", **dict(attrs, N=hi - lo))
                 for p, (lo, hi) in zip(self.parts[name], parts)]
        return nodes + [self.node("Concat", [f"{p}.y" for p in self.parts[name]], [y], f"{name}.Parts", axis=-1)]

    def apply(self, replace: dict, post=None) -> None:
        """Splice into the graph: each node whose id is in ``replace`` becomes its list of nodes ([] drops it),
        ``post`` (nodes -> nodes) runs over the result; initializers no node reads any more are dropped and the
        new ones (``new_inits``) added."""
        g = self.graph
        nodes = [m for n in g.node for m in replace.get(id(n), [n])]
        nodes = post(nodes) if post else nodes
        del g.node[:]
        g.node.extend(nodes)
        used = {i for n in g.node for i in n.input}
        kept = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(kept + self.new_inits)

    def tied_embedding(self, gather, head: str, b: Blocks, name: str = "embed_tokens") -> list:
        """The lookup ``gather`` (Gather(E, ids [...]) -> [..., K]) of an embedding E whose 8-bit Blocks ``b`` the
        output head ``head`` (a ``matmul`` of this rewriter) already stores as ``{head}.codes`` / ``.scales`` /
        ``.zero_points`` -> GatherBlockQuantized over aliases of those bytes (stored once; the lookup maps its own
        view of them, so the head's copy is freed once onnxruntime has packed it: ``mapped_weights.py``), plus the
        rows of R ([V, K/block], stored for the lookup) where a float minimum needs the correction, and a Reshape
        to [..., K]."""
        v, kb = b.scales.shape
        heads = self.parts.get(head, [head])  # the head's row parts lie back to back in the saved file
        inputs = [self.alias(f"{name}.codes", [f"{p}.codes" for p in heads], b.codes.shape), gather.input[1],
                  self.alias(f"{name}.scales", [f"{p}.scales" for p in heads], (v, kb, 1))]
        if b.zero_points is not None:
            inputs.append(self.alias(f"{name}.zero_points", [f"{p}.zero_points" for p in heads], (v, kb, 1)))
        return self.lookup(gather, b, inputs, name)

    def embedding(self, gather, b: Blocks, name: str = "embed_tokens") -> list:
        """The lookup ``gather`` of an embedding that no head shares (an untied model's), on its own 8-bit Blocks
        ``b`` (``{name}.codes`` / ``.scales`` / ``.zero_points``, stored for the lookup alone): GatherBlockQuantized
        as ``tied_embedding``'s, instead of the dequantised float32 table (4x the bytes of 8-bit codes)."""
        v, kb = b.scales.shape
        inputs = [self.init(f"{name}.codes", b.codes), gather.input[1],
                  self.init(f"{name}.scales", b.scales.reshape(v, kb, 1))]
        if b.zero_points is not None:
            inputs.append(self.init(f"{name}.zero_points", b.zero_points.reshape(v, kb, 1)))
        for t in b.types:
            self.native[t] += 1
        return self.lookup(gather, b, inputs, name)

    def lookup(self, gather, b: Blocks, inputs: list[str], name: str) -> list:
        """GatherBlockQuantized (bits=8) over ``inputs`` (codes, ids, scales[, zero points]) for the lookup
        ``gather`` of the 8-bit Blocks ``b`` -> [..., K], plus the rows of R where a float minimum needs the
        correction, and a Reshape."""
        kb = b.scales.shape[1]
        rows, ids = f"{name}.rows", gather.input[1]
        nodes = [self.node("GatherBlockQuantized", inputs, [rows], name, "com.microsoft", bits=8,
                           block_size=b.block_size, gather_axis=0, quantize_axis=2)]  # [..., K/block, block]
        if b.correction is not None:  # + R[id]: one value per block of the row, over its weights
            nodes += [self.node("Gather", [self.init(f"{name}.correction", b.correction), ids], [f"{name}.r"],
                                f"{name}.GatherCorrection", axis=0),  # [..., K/block]
                      self.node("Unsqueeze", [f"{name}.r", self.inits_once("last_axis", np.array([-1]))],
                                [f"{name}.r1"], f"{name}.CorrectionBlocks"),
                      self.node("Add", [rows, f"{name}.r1"], [f"{name}.rows_r"], f"{name}.AddCorrection")]
            rows = f"{name}.rows_r"
        return nodes + [
            self.node("Shape", [ids], [f"{name}.ids_shape"], f"{name}.IdsShape"),
            self.node("Concat", [f"{name}.ids_shape", self.init(f"{name}.width", np.array([kb * b.block_size]))],
                      [f"{name}.shape"], f"{name}.Shape", axis=0),
            self.node("Reshape", [rows, f"{name}.shape"], [gather.output[0]], f"{name}.Reshape")]
