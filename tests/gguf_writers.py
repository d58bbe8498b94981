"""Tiny GGUF files (F32, or every matrix in one block type) laid out as llama.cpp's converter writes them, with the
metadata transformers' GGUF loader ignores (rope scaling, rope_freqs, Gemma's soft-capping and query scale, Qwen3's
head size), and Phi-3's packed tensors: the inputs of tests/test_gguf_config.py and of
tests/data/gguf_llama_cpp/make_reference_logits.py, which stores llama.cpp's logits for them. Seeded: the same call
writes the same bytes (the reference records each file's sha256)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS, WINDOW = 64, 4, 2, 16, 96, 2, 4
#: name -> (architecture, extra metadata, rope factor tensors: "llama3" (rope_freqs), "longrope" or None)
CASES = {
    "llama-rope-freqs": ("llama", {}, "llama3"),
    "gemma2-softcap": ("gemma2", {"attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}, None),
    "gemma3-rope-linear": ("gemma3", {"rope.scaling.type": "linear", "rope.scaling.factor": 8.0}, None),
    "qwen3-head-dim": ("qwen3", {}, None),  # key_length 16: transformers' Qwen3 default is 128
    # YaRN as a Yarn-Mistral / Llama file and a Qwen3 file made for a longer context have it (transformers' loader
    # drops it): factor 8 over an original context of 32; factor 4, no original context (llama.cpp: the context,
    # 256), an attention factor
    "llama-yarn": ("llama", {"rope.scaling.type": "yarn", "rope.scaling.factor": 8.0,
                             "rope.scaling.original_context_length": 32}, None),
    "qwen3-yarn": ("qwen3", {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                             "rope.scaling.attn_factor": 0.9}, None),
    "qwen2-yarn": ("qwen2", {"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                             "rope.scaling.original_context_length": 64}, None),  # q/k/v biases, a tied head
    "phi3-packed": ("phi3", {}, None),  # q/k/v rows in one attn_qkv, gate and up rows in one ffn_up; an untied head
    # Phi-3.5's LongRoPE: per-frequency short and long factors as tensors, the original context (256: llama.cpp's
    # smallest context, 256, rotates with the short factors) and the attention factor sqrt(1 + ln 4 / ln 256)
    "phi3-longrope": ("phi3", {"rope.scaling.original_context_length": 256,
                               "rope.scaling.attn_factor": float(np.sqrt(1 + np.log(4) / np.log(256)))}, "longrope"),
    "phi3-partial-rotary": ("phi3", {"rope.dimension_count": HEAD_DIM // 2}, None),  # as Phi-4-mini: 96 of 128
    # architectures transformers' GGUF loader does not know (export/gguf_architectures.py): Gemma 1 (norms stored as
    # 1 + w, tied, no rope base); Granite with its four multipliers; SmolLM3 with 4 layers, the 4th without rotary
    "gemma": ("gemma", {}, None),
    "granite-multipliers": ("granite", {"attention.scale": 0.3, "embedding_scale": 3.0, "residual_scale": 0.5,
                                        "logit_scale": 2.5}, None),
    "smollm3-nope": ("smollm3", {"block_count": 4}, None),
    "olmo2": ("olmo2", {}, None),  # OLMo 2: post-norms, q/k norms over the full projections, an untied head
    # OLMo 3 as llama.cpp's converter writes it: OLMo 2's architecture with a sliding window (4 here) on the layers
    # the pattern array names (not the default every-4th-global: the first layer global too), YaRN on the global ones
    # (factor 8 over an original context of 32)
    "olmo3": ("olmo2", {"block_count": 4, "attention.sliding_window": WINDOW,
                        "attention.sliding_window_pattern": [False, True, True, False], "rope.scaling.type": "yarn",
                        "rope.scaling.factor": 8.0, "rope.scaling.original_context_length": 32}, None),
    # one without the pattern (llama.cpp: every 4th layer global), YaRN with an attention factor and no original
    # context (llama.cpp: the context, 256)
    "olmo3-default-pattern": ("olmo2", {"block_count": 4, "attention.sliding_window": WINDOW,
                                        "rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                                        "rope.scaling.attn_factor": 0.9}, None),
    # ERNIE 4.5 dense as llama.cpp's converter writes it: no rope.dimension_count, the head size in key_length (16,
    # where Ernie4_5Config's default is 128), q/k rows as they are (llama.cpp and transformers both rotate pairs)
    "ernie4_5": ("ernie4_5", {"rope.dimension_count": None}, None),
    "ernie4_5-no-key-length": ("ernie4_5", {"rope.dimension_count": None, "attention.key_length": None}, None),
    # EXAONE 4.0: OLMo 2's post-norms with per-head q/k norms, an untied head. Its 1.2B shape: a sliding window in the
    # file that llama.cpp does not apply (none but the 64-layer model has windowed layers); and the 32B's shape in
    # 64 tiny layers, a window of 4 on the layers the pattern array names (every other one here), its global layers
    # without rotary
    "exaone4": ("exaone4", {"attention.sliding_window": WINDOW}, None),
    # EXAONE-4.0-1.2B as its files are: llama3 rope scaling (rope_freqs) and a tied head ("tied": no output.weight)
    "exaone4-tied-rope-freqs": ("exaone4", {"tied": True}, "llama3"),
    "exaone4-swa": ("exaone4", {"block_count": 64, "attention.sliding_window": WINDOW,
                                "attention.sliding_window_pattern": [i % 2 == 0 for i in range(64)]}, None),
    # what llama.cpp takes when a key is absent, where transformers' default differs: Granite's query scale
    # (1/sqrt(head size), not 1.0); SmolLM3's and ERNIE 4.5's rope base (10000, not 2,000,000 / 500,000). None: the
    # key is not written.
    "granite-default-scales": ("granite", {"logit_scale": 2.5}, None),
    "smollm3-default-rope-base": ("smollm3", {"block_count": 4, "rope.freq_base": None}, None),
    "ernie4_5-default-rope-base": ("ernie4_5", {"rope.dimension_count": None, "rope.freq_base": None}, None),
    # LayerNorm architectures transformers' loader knows but reads in part. GPT-2 as llama.cpp's converter writes it
    # (a feed-forward of 4 x hidden, a tied head, learned positions): a context of 256, where GPT2Config's default is
    # 1024. StableLM 2 as its converter writes it (no rope base; q/k/v biases): half of each head rotated
    # (StableLmConfig's default: a quarter); then one with a rope base in the file (another tool's) and one with
    # parallel residuals (no ffn_norm: StableLM 2 12B's layout, without its q/k norms)
    "gpt2": ("gpt2", {}, None),
    "gpt2-narrow-mlp": ("gpt2", {"ffn": 2 * HIDDEN}, None),  # another tool's file: GPT2Config's default is 4 x hidden
    "stablelm": ("stablelm", {"rope.dimension_count": HEAD_DIM // 2, "qkv_bias": True}, None),
    "stablelm-no-rope-dims": ("stablelm", {"rope.dimension_count": None}, None),  # llama.cpp: every dim rotates
    "stablelm-rope-base": ("stablelm", {"rope.dimension_count": HEAD_DIM // 4, "rope.freq_base": 100.0}, None),
    "stablelm-parallel-residual": ("stablelm", {"rope.dimension_count": HEAD_DIM // 4, "parallel": True}, None),
    # a head size onnxruntime's GroupQueryAttention cannot take (12: not a multiple of 8), 8 heads and 4 kv heads
    "llama-head-12": ("llama", {"heads": 8, "head_dim": 12}, None),
    # LFM2 as llama.cpp's converter writes it: 4 layers, convolutions (3 taps) on 0 and 2, attention on 1 and 3 (its
    # head_count_kv an array: 0 for a convolution layer), the final norm as token_embd_norm, a tied head; then one
    # without a rope base (llama.cpp: 10000; Lfm2Config: 1,000,000)
    "lfm2": ("lfm2", {"block_count": 4}, None),
    "lfm2-default-rope-base": ("lfm2", {"block_count": 4, "rope.freq_base": None}, None),
}
#: architectures with LayerNorm (weight and bias) where the others have RMSNorm, and no rope base in the converter's
#: file
LAYER_NORM_ARCHS = ("gpt2", "stablelm")
#: pseudo-keys of ``CASES``' metadata: how the tensors are laid out, never written as metadata
LAYOUT_KEYS = ("block_count", "tied", "qkv_bias", "parallel", "ffn", "heads", "head_dim")
#: cases whose metadata transformers' loader reads whole: they check a tensor layout, not a restored setting -> the
#: kv layout their export takes (None: the plain graph, for a head size GroupQueryAttention cannot take)
LAYOUT_CASES = {"phi3-packed": "fused-gqa", "stablelm-parallel-residual": "fused-gqa", "llama-head-12": None,
                "lfm2": "fused-gqa"}
LFM2_ATTENTION = (1, 3)  # the attention layers of the LFM2 cases
#: token ids fed to both runtimes (BOS first): longer than the sliding window of the Gemma cases
IDS = [1, 40, 41, 72, 100, 150, 200, 3, 9, 250, 77, 120]


def llama3_factors(head_dim: int, base: float = 10000.0, factor: float = 8.0, low: float = 1.0, high: float = 4.0,
                   original: int = 16) -> np.ndarray:
    """[head_dim / 2] float32: llama.cpp's converter's rope_freqs for llama3 scaling (convert_hf_to_gguf.py), with a
    tiny original context so that all three bands (kept, divided by ``factor``, smoothed) occur."""
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    low_wavelen, high_wavelen = original / low, original / high
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def add_tiny_vocabulary(w, specials: list[str], tokens: list[str]) -> None:
    """Into GGUF writer ``w``: a byte-level BPE vocabulary of ``tokens`` (``specials`` first, as control tokens;
    one merge, " t"), BOS 1, EOS 2, pad 0."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    w.add_token_merges(["\u0120 t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)


def write_out(w) -> None:
    """GGUF writer ``w``'s header, metadata and tensors to its file, which is then closed."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_tiny_gguf(path: Path, case: str, drop: tuple[str, ...] = (), extra_tensors: dict | None = None,
                    block_type: str | None = None, context: int | None = None, metadata: dict | None = None) -> str:
    """Write CASES[case] to ``path`` -> its sha256. Random F32 weights (norms near 1), a byte-level vocabulary.
    ``drop``: keys of the case's extra metadata left out; ``extra_tensors``: name -> F32 array, written last;
    ``block_type`` (e.g. "Q8_0"): every matrix in that GGUF block type (gguf-py's quantize) instead of F32;
    ``context``: its context_length (default 256, 1024 for LongRoPE); ``metadata``: full key -> bool / int / str,
    written as it is (e.g. an embedding model's ``qwen3.pooling_type``, ``tokenizer.ggml.add_eos_token``)."""
    _write(path, case, drop, extra_tensors=extra_tensors or {}, block_type=block_type, context=context,
           metadata=metadata)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_tiny_split_gguf(path: Path, case: str, tensors_per_file: int) -> list[Path]:
    """CASES[case] as ``write_tiny_gguf`` writes it, split as llama.cpp's gguf-split does (gguf-py's writer: at most
    ``tensors_per_file`` tensors a file; the metadata in the first) -> the files, ``<stem>-00001-of-0000N.gguf``
    beside ``path``, in order."""
    _write(path, case, (), tensors_per_file)
    return sorted(Path(path).parent.glob(f"{Path(path).stem}-*-of-*.gguf"))


def _write(path: Path, case: str, drop: tuple[str, ...], split_max_tensors: int = 0,
           extra_tensors: dict | None = None, block_type: str | None = None, context: int | None = None,
           metadata: dict | None = None) -> None:
    import gguf
    from tokenizers.pre_tokenizers import ByteLevel

    arch, extra, rope_freqs = CASES[case]
    rng = np.random.default_rng(11)
    specials = ["<pad>", "<bos>", "<eos>"]
    tokens = specials + sorted(ByteLevel.alphabet()) + ["\u0120t"]
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_context_length(context or (1024 if rope_freqs == "longrope" else 256))
    w.add_embedding_length(HIDDEN)
    layers = extra.get("block_count", LAYERS)
    w.add_block_count(layers)
    layer_norm = arch in LAYER_NORM_ARCHS
    w.add_feed_forward_length(extra.get("ffn", 4 * HIDDEN) if arch == "gpt2" else FFN)
    heads, head_dim = extra.get("heads", HEADS), extra.get("head_dim", HEAD_DIM)
    w.add_head_count(heads)
    if arch == "lfm2":  # per layer: 0 for a convolution layer
        w.add_head_count_kv([KV_HEADS if i in LFM2_ATTENTION else 0 for i in range(layers)])
        w.add_uint32("lfm2.shortconv.l_cache", 3)
    elif arch != "gpt2":  # GPT-2: as many kv heads as heads (llama.cpp's default), no rotary
        w.add_head_count_kv(heads * KV_HEADS // HEADS)
    if "attention.key_length" not in extra and not layer_norm:  # None there: neither head size written (llama.cpp:
        w.add_key_length(head_dim)                                # hidden / heads)
        w.add_value_length(head_dim)
    if "rope.dimension_count" not in extra and arch != "gpt2":
        w.add_rope_dimension_count(head_dim)
    if layer_norm:
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-6)
    # llama.cpp's Gemma and StableLM converters write no rope base (10000, as llama.cpp reads it); GPT-2 has no rotary
    if arch not in ("gemma", *LAYER_NORM_ARCHS) and "rope.freq_base" not in extra:
        w.add_rope_freq_base(10000.0)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(WINDOW)
    for key, value in ((k, v) for k, v in extra.items()
                       if k not in drop and k not in LAYOUT_KEYS and v is not None):
        full = f"{arch}.{key}"
        if isinstance(value, str):
            w.add_string(full, value)
        elif isinstance(value, list):
            w.add_array(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        else:
            w.add_float32(full, value)
    add_tiny_vocabulary(w, specials, tokens)
    for key, value in (metadata or {}).items():
        (w.add_bool if isinstance(value, bool) else w.add_uint32 if isinstance(value, int) else w.add_string)(
            key, value)

    def mat(name: str, n: int, k: int) -> None:  # a [n, k] weight (GGUF shape [k, n])
        weight = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        if block_type is None:
            w.add_tensor(name, weight)
            return
        kind = gguf.GGMLQuantizationType[block_type]
        codes = gguf.quants.quantize(weight, kind)
        w.add_tensor(name, codes, raw_shape=codes.shape, raw_dtype=kind)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", len(tokens), HIDDEN)
    if layer_norm:
        _layer_norm_tensors(arch, extra, layers, len(tokens), mat, norm, lambda name, n: w.add_tensor(
            name, (0.1 * rng.standard_normal(n)).astype(np.float32)))
    else:
        (_lfm2_tensors if arch == "lfm2" else _rms_norm_tensors)(w, arch, extra, rope_freqs, layers, len(tokens), mat,
                                                                 norm)
    for name, array in (extra_tensors or {}).items():
        w.add_tensor(name, np.asarray(array, np.float32))
    write_out(w)


def _lfm2_tensors(w, arch: str, extra: dict, rope_freqs: str | None, layers: int, vocab: int, mat, norm) -> None:
    """An LFM2 file's layers and final norm as llama.cpp's converter lays them out (tied head; the order:
    benchmarks/synthetic_lfm2_gguf.py's ``lfm2_layers``), its convolution weights [hidden, 3] from a seed of their
    own."""
    from benchmarks.synthetic_lfm2_gguf import lfm2_layers

    rng = np.random.default_rng(12)
    lfm2_layers(mat, norm, lambda name: w.add_tensor(name, (0.5 * rng.standard_normal((HIDDEN, 3))).astype(np.float32)),
                layers=layers, attention=LFM2_ATTENTION, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN)


def _rms_norm_tensors(w, arch: str, extra: dict, rope_freqs: str | None, layers: int, vocab: int, mat, norm) -> None:
    """The rope factor tensors, layers, final norm and head (where untied) of a file of the RMSNorm architectures
    (Llama's layout, with each one's norms and Phi-3's packed tensors) as llama.cpp's converter lays them out."""
    q_width = extra.get("heads", HEADS) * extra.get("head_dim", HEAD_DIM)  # the "heads" / "head_dim" layout keys
    if rope_freqs == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_factors(HEAD_DIM))
    if rope_freqs == "longrope":
        factors = np.linspace(1.0, 3.0, HEAD_DIM // 2, dtype=np.float32)
        w.add_tensor("rope_factors_long.weight", 2 * factors)
        w.add_tensor("rope_factors_short.weight", factors)
    for i in range(layers):
        if arch in ("olmo2", "exaone4"):  # no pre-norms: the branches' outputs are normed; q and k over their full
            # width (OLMo 2) or per head (EXAONE 4)
            norm(f"blk.{i}.post_attention_norm.weight", HIDDEN)
            norm(f"blk.{i}.post_ffw_norm.weight", HIDDEN)
            norm(f"blk.{i}.attn_q_norm.weight", HEAD_DIM if arch == "exaone4" else HEADS * HEAD_DIM)
            norm(f"blk.{i}.attn_k_norm.weight", HEAD_DIM if arch == "exaone4" else KV_HEADS * HEAD_DIM)
        else:
            norm(f"blk.{i}.attn_norm.weight", HIDDEN)
            norm(f"blk.{i}.ffn_norm.weight", HIDDEN)
        if arch in ("gemma2", "gemma3"):
            norm(f"blk.{i}.post_attention_norm.weight", HIDDEN)
            norm(f"blk.{i}.post_ffw_norm.weight", HIDDEN)
        if arch in ("gemma3", "qwen3"):
            norm(f"blk.{i}.attn_q_norm.weight", HEAD_DIM)
            norm(f"blk.{i}.attn_k_norm.weight", HEAD_DIM)
        if arch == "phi3":  # llama.cpp's Phi-3 layout: q, k, v rows in one tensor; gate, then up rows in another
            mat(f"blk.{i}.attn_qkv.weight", (HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN)
        else:
            mat(f"blk.{i}.attn_q.weight", q_width, HIDDEN)
            mat(f"blk.{i}.attn_k.weight", q_width * KV_HEADS // HEADS, HIDDEN)
            mat(f"blk.{i}.attn_v.weight", q_width * KV_HEADS // HEADS, HIDDEN)
        if arch == "qwen2":  # q/k/v biases (values near 1, as the norms')
            for part, width in (("q", q_width), ("k", q_width * KV_HEADS // HEADS), ("v", q_width * KV_HEADS // HEADS)):
                norm(f"blk.{i}.attn_{part}.bias", width)
        mat(f"blk.{i}.attn_output.weight", HIDDEN, q_width)
        if arch == "phi3":
            mat(f"blk.{i}.ffn_up.weight", 2 * FFN, HIDDEN)
        else:
            mat(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
            mat(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        mat(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    norm("output_norm.weight", HIDDEN)
    if arch in ("llama", "phi3", "olmo2", "exaone4") and not extra.get("tied"):
        mat("output.weight", vocab, HIDDEN)


def _layer_norm_tensors(arch: str, extra: dict, layers: int, vocab: int, mat, norm, bias) -> None:
    """The layers, final norm and head of a GPT-2 or StableLM file as llama.cpp's converter lays them out: LayerNorm
    weights with biases; GPT-2's learned positions, q/k/v rows in one ``attn_qkv`` (transposed from its Conv1D
    weights), biases everywhere, an up/down MLP and a tied head; StableLM's q/k/v (biases with ``qkv_bias``), a gated
    MLP, an ``ffn_norm`` unless the residuals are parallel, an untied head."""
    gpt2 = arch == "gpt2"
    if gpt2:
        mat("position_embd.weight", 256, HIDDEN)  # [context, hidden]
    ffn = extra.get("ffn", 4 * HIDDEN) if gpt2 else FFN
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight", HIDDEN)
        bias(f"blk.{i}.attn_norm.bias", HIDDEN)
        if gpt2:
            mat(f"blk.{i}.attn_qkv.weight", 3 * HIDDEN, HIDDEN)
            bias(f"blk.{i}.attn_qkv.bias", 3 * HIDDEN)
        else:
            for p, n in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                mat(f"blk.{i}.attn_{p}.weight", n * HEAD_DIM, HIDDEN)
                if extra.get("qkv_bias"):
                    bias(f"blk.{i}.attn_{p}.bias", n * HEAD_DIM)
        mat(f"blk.{i}.attn_output.weight", HIDDEN, HEADS * HEAD_DIM)
        if gpt2:
            bias(f"blk.{i}.attn_output.bias", HIDDEN)
        if not extra.get("parallel"):
            norm(f"blk.{i}.ffn_norm.weight", HIDDEN)
            bias(f"blk.{i}.ffn_norm.bias", HIDDEN)
        if not gpt2:
            mat(f"blk.{i}.ffn_gate.weight", ffn, HIDDEN)
        mat(f"blk.{i}.ffn_up.weight", ffn, HIDDEN)
        if gpt2:
            bias(f"blk.{i}.ffn_up.bias", ffn)
        mat(f"blk.{i}.ffn_down.weight", HIDDEN, ffn)
        if gpt2:
            bias(f"blk.{i}.ffn_down.bias", HIDDEN)
    norm("output_norm.weight", HIDDEN)
    bias("output_norm.bias", HIDDEN)
    if not gpt2:
        mat("output.weight", vocab, HIDDEN)
