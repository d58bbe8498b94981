"""A GGUF's metadata checked before anything reads it (export/gguf_header.py): a key the import reads of the wrong
GGUF value type or out of its range, or a block_count the file's tensors do not have, is a ModelFileError naming the
file, the key, its type and value and what is allowed, from the reader every path takes (``onnxlm info``, the
metadata and tokenizer readers, the export, transformers' loader), one ``onnxlm: error:`` line on the command line;
where they went on before, they hung ``onnxlm info`` (4e9 blocks), broke transformers or the tokenizer builders with
tracebacks (TypeError, ZeroDivisionError, AttributeError) or exported NaN. A context past the positions an export
holds is capped (export/gguf_config.py ``MAX_POSITIONS``). The files are a few hundred bytes: tiny tensors (only
their names count here), a four-token vocabulary."""
from __future__ import annotations

import contextlib
import signal

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="GGUF import needs the 'export' extra (gguf)")

from gguf.constants import GGUFValueType as T  # noqa: E402

from cli_util import run_cli  # noqa: E402
from onnxlm.export.gguf import build_tokenizer_from_gguf, read_gguf_metadata  # noqa: E402
from onnxlm.export.gguf_reader import gguf_reader  # noqa: E402
from onnxlm.export.gguf_summary import summarize_gguf  # noqa: E402
from onnxlm.runtime.errors import ModelFileError  # noqa: E402

#: a valid tiny Llama header: key ("{arch}." for the architecture's) -> (GGUF value type, value)
BASE = {
    "{arch}.context_length": (T.UINT32, 256),
    "{arch}.embedding_length": (T.UINT32, 64),
    "{arch}.block_count": (T.UINT32, 2),
    "{arch}.feed_forward_length": (T.UINT32, 96),
    "{arch}.attention.head_count": (T.UINT32, 4),
    "{arch}.attention.head_count_kv": (T.UINT32, 2),
    "{arch}.rope.dimension_count": (T.UINT32, 16),
    "{arch}.attention.layer_norm_rms_epsilon": (T.FLOAT32, 1e-6),
    "{arch}.rope.freq_base": (T.FLOAT32, 10000.0),
    "tokenizer.ggml.model": (T.STRING, "gpt2"),
    "tokenizer.ggml.pre": (T.STRING, "default"),
    "tokenizer.ggml.tokens": ((T.ARRAY, T.STRING), ["<s>", "a", "b", "ab"]),
    "tokenizer.ggml.token_type": ((T.ARRAY, T.INT32), [3, 1, 1, 1]),
    "tokenizer.ggml.merges": ((T.ARRAY, T.STRING), ["a b"]),
    "tokenizer.ggml.bos_token_id": (T.UINT32, 0),
    "tokenizer.ggml.eos_token_id": (T.UINT32, 0),
}


def write_header(path, changes: dict | None = None, arch: str = "llama", blocks: int = 2) -> str:
    """A tiny GGUF of ``BASE``'s metadata with ``changes`` (key with "{arch}" -> (type, value), None: left out) and
    one small tensor per block (``blocks`` of them) beside the embedding -> its path."""
    w = gguf.GGUFWriter(str(path), arch)
    meta = {**BASE, **(changes or {})}
    for key, spec in meta.items():
        if spec is None:
            continue
        vtype, value = spec
        if isinstance(vtype, tuple):
            w.add_key_value(key.format(arch=arch), value, vtype[0], sub_type=vtype[1])
        else:
            w.add_key_value(key.format(arch=arch), value, vtype)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    for i in range(blocks):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


#: (id, changes, what the error says after the key) -- each a value the import used to read as it was
BAD = [
    ("block-count-string", {"{arch}.block_count": (T.STRING, "two")},
     "llama.block_count is the string 'two': it must be an integer >= 1"),
    ("block-count-float", {"{arch}.block_count": (T.FLOAT32, 2.0)},
     "llama.block_count is 2.0 (FLOAT32): it must be an integer >= 1"),
    ("block-count-array", {"{arch}.block_count": ((T.ARRAY, T.INT32), [2, 2])},
     "llama.block_count is an array of 2 INT32 ([2, 2]): it must be an integer >= 1"),
    ("block-count-0", {"{arch}.block_count": (T.UINT32, 0)}, "llama.block_count is 0 (UINT32): it must be an integer"),
    ("block-count-huge", {"{arch}.block_count": (T.UINT32, 4_000_000_000)},
     "llama.block_count is 4000000000, but the file's tensors are those of 2 blocks (blk.0 .. blk.1)"),
    ("block-count-3", {"{arch}.block_count": (T.UINT32, 3)},
     "llama.block_count is 3, but the file's tensors are those of 2 blocks"),
    ("head-count-string", {"{arch}.attention.head_count": (T.STRING, "4")},
     "llama.attention.head_count is the string '4': it must be an integer >= 1"),
    ("head-count-0", {"{arch}.attention.head_count": (T.UINT32, 0)},
     "llama.attention.head_count is 0 (UINT32): it must be an integer >= 1"),
    ("head-count-kv-0", {"{arch}.attention.head_count_kv": (T.UINT32, 0)},
     "llama.attention.head_count_kv is 0 (UINT32): it must be an integer >= 1"),
    ("head-count-not-divisible", {"{arch}.attention.head_count": (T.UINT32, 3)},
     "llama.attention.head_count_kv is 2 (UINT32): it must be a divisor of llama.attention.head_count (3)"),
    ("head-count-kv-above-heads", {"{arch}.attention.head_count_kv": (T.UINT32, 8)},
     "it must be a divisor of llama.attention.head_count (4)"),
    ("head-count-kv-array-short", {"{arch}.attention.head_count_kv": ((T.ARRAY, T.INT32), [2])},
     "llama.attention.head_count_kv is an array of 1 INT32 ([2]): it must be an integer, or an array of 2 integers "
     "(one per block"),
    ("head-count-kv-array-llama", {"{arch}.attention.head_count_kv": ((T.ARRAY, T.INT32), [2, 2])},
     "it must be one integer: onnxlm exports a per-layer kv head count only in lfm2 files"),
    ("head-count-kv-array-strings", {"{arch}.attention.head_count_kv": ((T.ARRAY, T.STRING), ["2", "2"])},
     "llama.attention.head_count_kv is an array of 2 STRING (['2', '2']): it must be an integer (or an array"),
    ("context-string", {"{arch}.context_length": (T.STRING, "big")},
     "llama.context_length is the string 'big': it must be an integer >= 1"),
    ("context-0", {"{arch}.context_length": (T.UINT32, 0)},
     "llama.context_length is 0 (UINT32): it must be an integer >= 1"),
    ("eps-string", {"{arch}.attention.layer_norm_rms_epsilon": (T.STRING, "1e-6")},
     "llama.attention.layer_norm_rms_epsilon is the string '1e-6': it must be a finite number > 0"),
    ("eps-negative", {"{arch}.attention.layer_norm_rms_epsilon": (T.FLOAT32, -1.0)},
     "llama.attention.layer_norm_rms_epsilon is -1.0 (FLOAT32): it must be a finite number > 0"),
    ("eps-0", {"{arch}.attention.layer_norm_rms_epsilon": (T.FLOAT32, 0.0)}, "it must be a finite number > 0"),
    ("eps-nan", {"{arch}.attention.layer_norm_rms_epsilon": (T.FLOAT32, float("nan"))},
     "layer_norm_rms_epsilon is nan (FLOAT32): it must be a finite number > 0"),
    ("rope-base-0", {"{arch}.rope.freq_base": (T.FLOAT32, 0.0)},
     "llama.rope.freq_base is 0.0 (FLOAT32): it must be a finite number > 0"),
    ("rope-base-inf", {"{arch}.rope.freq_base": (T.FLOAT32, float("inf"))},
     "llama.rope.freq_base is inf (FLOAT32): it must be a finite number > 0"),
    ("chat-template-u32", {"tokenizer.chat_template": (T.UINT32, 5)},
     "tokenizer.chat_template is 5 (UINT32): it must be a string"),
    ("eos-array", {"tokenizer.ggml.eos_token_id": ((T.ARRAY, T.INT32), [2, 0])},
     "tokenizer.ggml.eos_token_id is an array of 2 INT32 ([2, 0]): it must be an integer >= 0"),
    ("eos-negative", {"tokenizer.ggml.eos_token_id": (T.INT32, -1)},
     "tokenizer.ggml.eos_token_id is -1 (INT32): it must be an integer >= 0"),
    ("merges-ints", {"tokenizer.ggml.merges": ((T.ARRAY, T.INT32), [1, 2])},
     "tokenizer.ggml.merges is an array of 2 INT32 ([1, 2]): it must be an array of strings"),
    ("token-type-strings", {"tokenizer.ggml.token_type": ((T.ARRAY, T.STRING), ["x", "x", "x"])},
     "tokenizer.ggml.token_type is an array of 3 STRING (['x', 'x', 'x']): it must be an array of integers"),
    ("tokens-ints", {"tokenizer.ggml.tokens": ((T.ARRAY, T.INT32), [0, 1, 2])},
     "tokenizer.ggml.tokens is an array of 3 INT32 ([0, 1, 2]): it must be an array of strings"),
    ("tokens-string", {"tokenizer.ggml.tokens": (T.STRING, "abc")},
     "tokenizer.ggml.tokens is the string 'abc': it must be an array of strings"),
    ("add-bos-string", {"tokenizer.ggml.add_bos_token": (T.STRING, "yes")},
     "tokenizer.ggml.add_bos_token is the string 'yes': it must be a boolean"),
    ("tokenizer-model-u32", {"tokenizer.ggml.model": (T.UINT32, 5)},
     "tokenizer.ggml.model is 5 (UINT32): it must be a string"),
]


@contextlib.contextmanager
def within(seconds: int):
    """TimeoutError when the block runs past ``seconds`` (a hang fails the test instead of stalling the suite)."""
    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_base_header_is_read_whole(tmp_path):
    """The files below differ from this valid one by one key: each error is that key's."""
    path = write_header(tmp_path / "ok.gguf")
    meta = read_gguf_metadata(path)
    assert meta["llama.block_count"] == 2 and meta["tokenizer.ggml.tokens"] == ["<s>", "a", "b", "ab"]
    summary = summarize_gguf(path)
    assert summary["exported"] and summary["refused"] is None
    assert build_tokenizer_from_gguf(path).encode("ab").ids == [3]


@pytest.mark.parametrize("changes,message", [(c, m) for _, c, m in BAD], ids=[i for i, _, _ in BAD])
def test_a_key_of_the_wrong_type_or_range_is_refused_by_name(tmp_path, changes, message):
    """From every reader of the file: its header (``onnxlm info``), its metadata and tokenizer (the export, a
    ``.gguf`` run as it is), within a second (4e9 blocks hung ``info``)."""
    path = write_header(tmp_path / "bad.gguf", changes)
    for read in (gguf_reader, summarize_gguf, read_gguf_metadata, build_tokenizer_from_gguf):
        with within(10), pytest.raises(ModelFileError) as info:
            read(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), (read.__name__, info.value)
        assert info.value.path == path


def test_per_layer_kv_heads_of_an_lfm2_file_are_taken(tmp_path):
    """LFM2's per-layer head_count_kv (0 for a convolution layer) is valid, of block_count entries; one of another
    length, or with no attention layer, is not."""
    good = write_header(tmp_path / "lfm2.gguf", {"{arch}.attention.head_count_kv": ((T.ARRAY, T.INT32), [0, 2])},
                        arch="lfm2")
    assert read_gguf_metadata(good)["lfm2.attention.head_count_kv"] == [0, 2]
    for values, needle in (([0, 2, 2], "an array of 2 integers (one per block"),
                           ([0, 0], "at least one layer of attention"),
                           ([0, 3], "a divisor of lfm2.attention.head_count (4)")):
        bad = write_header(tmp_path / "lfm2-bad.gguf", {"{arch}.attention.head_count_kv": ((T.ARRAY, T.INT32), values)},
                           arch="lfm2")
        with pytest.raises(ModelFileError) as info:
            gguf_reader(bad)
        assert f"lfm2.attention.head_count_kv is an array of {len(values)} INT32 ({values!r})" in str(info.value)
        assert needle in str(info.value), info.value


def test_another_architectures_keys_are_not_judged_and_info_does_not_loop_over_them(tmp_path):
    """An architecture onnxlm does not export may mean other things by its keys (``info`` says it is not exported):
    its block_count of 4e9 is not read as a count of blocks to visit."""
    path = write_header(tmp_path / "other.gguf", {"{arch}.block_count": (T.UINT32, 4_000_000_000),
                                                  "{arch}.attention.head_count": (T.UINT32, 0)}, arch="mamba")
    with within(10):
        summary = summarize_gguf(path)
    assert not summary["exported"] and summary["layers"] == 4_000_000_000 and summary["fp32_with_group"] == {}


def test_a_vocabulary_only_file_has_no_blocks_to_count_but_is_no_model(tmp_path):
    """A file without block tensors (llama.cpp's ggml-vocab-*.gguf: none at all; tests/gguf_vocabs.py's: one) keeps
    the model's header: its block_count is not judged against blocks it does not have where its vocabulary is read
    (``onnxlm tokenize``), but no model of its 4e9 blocks is built from it."""
    pytest.importorskip("torch")
    from onnxlm.export.gguf import load_gguf

    path = write_header(tmp_path / "no-blocks.gguf", {"{arch}.block_count": (T.UINT32, 4_000_000_000)}, blocks=0)
    assert read_gguf_metadata(path)["llama.block_count"] == 4_000_000_000
    with within(30), pytest.raises(ModelFileError, match="llama.block_count is 4000000000, but the file's tensors "
                                                          "are those of 0 blocks"):
        load_gguf(path)
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, (vtype, value) in BASE.items():
        if isinstance(vtype, tuple):
            w.add_key_value(key.format(arch="llama"), value, vtype[0], sub_type=vtype[1])
        else:
            w.add_key_value(key.format(arch="llama"), value, vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert read_gguf_metadata(path)["llama.block_count"] == 2


@pytest.mark.parametrize("changes,message", [
    ({"{arch}.block_count": (T.UINT32, 4_000_000_000)}, "llama.block_count is 4000000000, but"),
    ({"{arch}.attention.head_count": (T.UINT32, 0)}, "llama.attention.head_count is 0"),
    ({"tokenizer.ggml.eos_token_id": ((T.ARRAY, T.INT32), [2, 0])}, "tokenizer.ggml.eos_token_id is an array"),
], ids=["huge-block-count", "zero-heads", "eos-array"])
@pytest.mark.parametrize("command", ["info", "export", "generate"])
def test_the_cli_says_it_in_one_line(tmp_path, capsys, monkeypatch, changes, message, command):
    from onnxlm.export import gguf_artifact as GA

    monkeypatch.setenv(GA.CACHE_ENV, str(tmp_path / "cache"))
    path = write_header(tmp_path / "bad.gguf", changes)
    argv = {"info": ["info", path], "export": ["export", path, tmp_path / "out"],
            "generate": ["generate", path, "hi"]}[command]
    with within(60):
        code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("onnxlm: error: "), err
    assert message in lines[0] and str(path) in lines[0]
    assert not (tmp_path / "out").exists()


def test_granite_multipliers_of_0_mean_none_as_llama_cpp_reads_them():
    """llama.cpp applies Granite's attention scale, embedding, residual and logit multipliers only when not 0 (the
    attention scale's 0: 1/sqrt(head size)); transformers would multiply (or divide) by the 0."""
    from onnxlm.export.gguf_config import config_overrides

    meta = {"general.architecture": "granite", "granite.embedding_length": 64, "granite.attention.head_count": 4,
            "granite.block_count": 2, "granite.attention.scale": 0.0, "granite.embedding_scale": 0.0,
            "granite.residual_scale": 0.0, "granite.logit_scale": 0.0}
    out = config_overrides(meta)
    assert out["attention_multiplier"] == pytest.approx(16 ** -0.5)
    assert (out["embedding_multiplier"], out["residual_multiplier"], out["logits_scaling"]) == (1.0, 1.0, 1.0)
    kept = config_overrides({**meta, "granite.logit_scale": 2.5, "granite.attention.scale": 0.3})
    assert "logits_scaling" not in kept and "attention_multiplier" not in kept  # the loader's own mapping holds


def test_a_context_past_the_positions_an_export_holds_is_capped(tmp_path):
    """A context_length of 4e9 asked 2 TB of rotary tables and died; capped at ``MAX_POSITIONS`` (a longer prompt
    is refused by name at run time) for the rope types whose frequencies do not read it; a LongRoPE or YaRN config
    whose frequencies would read the capped count is refused by name instead."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig

    from onnxlm.export.gguf_config import MAX_POSITIONS, cap_positions
    from onnxlm.runtime.errors import ExportError

    config = LlamaConfig(max_position_embeddings=4_000_000_000)
    assert cap_positions(config) == 4_000_000_000 and config.max_position_embeddings == MAX_POSITIONS
    config = LlamaConfig(max_position_embeddings=131072)
    assert cap_positions(config) is None and config.max_position_embeddings == 131072
    yarn = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(max_position_embeddings=4_000_000_000, rope_scaling=yarn)
    assert cap_positions(config) == 4_000_000_000 and config.max_position_embeddings == MAX_POSITIONS
    config = LlamaConfig(max_position_embeddings=4_000_000_000, rope_scaling={"rope_type": "yarn", "factor": 8.0})
    with pytest.raises(ExportError, match="without its original context"):
        cap_positions(config)


def test_a_gguf_of_a_huge_context_loads_with_the_capped_count(tmp_path):
    """The file's own context (4e9) goes through transformers' loader and is capped before the model is built."""
    pytest.importorskip("torch")
    from gguf_writers import write_tiny_gguf

    from onnxlm.export.gguf import load_gguf
    from onnxlm.export.gguf_config import MAX_POSITIONS

    path = tmp_path / "huge-context.gguf"
    write_tiny_gguf(path, "qwen3-head-dim", context=4_000_000_000)
    assert read_gguf_metadata(path)["qwen3.context_length"] == 4_000_000_000
    with pytest.warns(UserWarning, match=f"context_length 4000000000 is past the {MAX_POSITIONS} positions"):
        loaded = load_gguf(path)
    assert loaded.model.config.max_position_embeddings == MAX_POSITIONS


def test_the_export_tells_its_user_the_context_was_capped(tmp_path, capsys):
    """export_model silences the libraries' warnings while it loads a model; the cap is onnxlm's own notice
    (``ExportNotice``) and reaches the user: a warning line and the manifest's max_positions."""
    pytest.importorskip("torch")
    import json

    from cli_util import run_cli
    from gguf_writers import write_tiny_gguf

    from onnxlm.export.gguf_config import MAX_POSITIONS

    path = tmp_path / "huge-context.gguf"
    write_tiny_gguf(path, "qwen3-head-dim", context=4_000_000_000)
    code, out, err = run_cli(capsys, "export", path, tmp_path / "out", "--no-validate")
    assert code == 0, err
    said = f"onnxlm: warning: {path}: its context_length 4000000000 is past the {MAX_POSITIONS}"
    assert (out + err).count(said) == 1, out + err
    assert json.loads((tmp_path / "out" / "onnxlm.json").read_text())["max_positions"] == MAX_POSITIONS
