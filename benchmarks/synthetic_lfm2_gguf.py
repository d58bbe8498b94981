"""Write a GGUF file shaped as LFM2-350M (random weights, Q8_0 blocks), for a side-by-side run of onnxlm and llama.cpp
on LFM2's graph where no real LFM2 file can be had (no model hub here; no registry package ships one).

The shape is LFM2-350M's as its config gives it: hidden 1024, 16 layers (attention at 2, 5, 8, 10, 12, 14, the others
3-tap short convolutions), 16 heads of 64 with 8 kv heads, a feed-forward of 4608 (6656 auto-adjusted: 2/3, rounded up
to a multiple of 256), a vocabulary of 65,536 (the byte-level alphabet, " t" and its merge, then synthetic tokens), rope base
1,000,000, norm eps 1e-5, a tied head. Every matrix in Q8_0 (gguf-py's quantize; the norms and convolution weights F32,
as LFM2's files have them), and a plain chat template. Its logits mean nothing; its speed is LFM2-350M's in that
block type.

    .venv/bin/python -m benchmarks.synthetic_lfm2_gguf OUT.gguf
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, TAPS = 1024, 16, 16, 8, 4608, 65536, 3
ATTENTION = (2, 5, 8, 10, 12, 14)
# a plain role-prefixed template (LFM2's own is ChatML with tokens this vocabulary lacks), so that the server's chat
# benchmarks (benchmarks.prefix_cache) run on the file; a turn's rendering starts with the previous turn's
CHAT_TEMPLATE = ("<|startoftext|>{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def lfm2_layers(mat, norm, conv, *, layers: int, attention, hidden: int, heads: int, kv_heads: int, ffn: int) -> None:
    """An LFM2 file's layers and final norm in the order llama.cpp's converter writes them, through the writer's
    callbacks ``mat(name, rows, cols)``, ``norm(name, n)`` and ``conv(name)`` (a convolution's [hidden, taps] F32
    weight): a convolution layer's shortconv.in_proj (B, C, x rows), shortconv.conv and shortconv.out_proj; an
    attention layer's q/k/v, per-head q/k norms and output; every layer's attn_norm (the operator norm), ffn_norm and
    gated MLP. Shared with tests/gguf_writers.py's tiny LFM2 files."""
    head = hidden // heads
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight", hidden)
        if i in attention:
            norm(f"blk.{i}.attn_q_norm.weight", head)
            norm(f"blk.{i}.attn_k_norm.weight", head)
            mat(f"blk.{i}.attn_q.weight", heads * head, hidden)
            mat(f"blk.{i}.attn_k.weight", kv_heads * head, hidden)
            mat(f"blk.{i}.attn_v.weight", kv_heads * head, hidden)
            mat(f"blk.{i}.attn_output.weight", hidden, heads * head)
        else:
            mat(f"blk.{i}.shortconv.in_proj.weight", 3 * hidden, hidden)
            conv(f"blk.{i}.shortconv.conv.weight")
            mat(f"blk.{i}.shortconv.out_proj.weight", hidden, hidden)
        norm(f"blk.{i}.ffn_norm.weight", hidden)
        mat(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        mat(f"blk.{i}.ffn_up.weight", ffn, hidden)
        mat(f"blk.{i}.ffn_down.weight", hidden, ffn)
    norm("token_embd_norm.weight", hidden)


def write(path: Path, block_type: str = "Q8_0", seed: int = 0) -> None:
    """The LFM2-350M-shaped file at ``path``."""
    import gguf
    from tokenizers.pre_tokenizers import ByteLevel

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "lfm2")
    w.add_context_length(4096)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv([KV_HEADS if i in ATTENTION else 0 for i in range(LAYERS)])
    w.add_uint32("lfm2.shortconv.l_cache", TAPS)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    specials = ["<|pad|>", "<|startoftext|>", "<|endoftext|>"]
    alphabet = sorted(ByteLevel.alphabet())
    filler = ["\u0120t"] + [f"\u0120tok{i}" for i in range(VOCAB - len(specials) - len(alphabet) - 1)]  # " t": the merge
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("lfm2")
    w.add_token_list(specials + alphabet + filler)
    w.add_token_types([3] * len(specials) + [1] * (VOCAB - len(specials)))
    w.add_token_merges(["\u0120 t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    kind = gguf.GGMLQuantizationType[block_type]

    def mat(name: str, n: int, k: int) -> None:  # a [n, k] weight in the block type
        codes = gguf.quants.quantize((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), kind)
        w.add_tensor(name, codes, raw_shape=codes.shape, raw_dtype=kind)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", VOCAB, HIDDEN)
    lfm2_layers(mat, norm, lambda name: w.add_tensor(name, (rng.standard_normal((HIDDEN, TAPS)) / np.sqrt(TAPS))
                                                     .astype(np.float32)),
                layers=LAYERS, attention=ATTENTION, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the GGUF file to write")
    ap.add_argument("--block-type", default="Q8_0", choices=("Q8_0", "Q4_0", "Q4_1", "Q5_0"))
    args = ap.parse_args(argv)
    write(args.out, args.block_type)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
