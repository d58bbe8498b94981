"""GGUF metadata transformers' loader drops, restored as llama.cpp reads it (export/gguf_config.py), against
llama.cpp's own logits on the same tiny files (stored by tests/data/gguf_llama_cpp/make_reference_logits.py with
llama-cpp-python; F32 weights, so the only differences are llama.cpp's F16 KV cache and summation order).

Cases (tests/gguf_writers.py): a Llama 3.1-style file with ``rope_freqs.weight`` (llama3 rope scaling as one factor
per frequency); a Gemma 2 file with its own soft-capping values (5 and 3, not the defaults 50 and 30) and a sliding
window of 4; a Gemma 3 file with linear rope scaling (factor 8, as Gemma 3 4B+ files have) on its global layers; a
Qwen3 file whose head size (``attention.key_length`` 16) is not transformers' Qwen3 default (128); a Phi-3 file with
llama.cpp's packed q/k/v and gate/up tensors (and no sliding window: llama.cpp 0.3.36 ignores a Phi-3 file's
``attention.sliding_window``, measured: a window of 4 in this file's metadata gave the same logits, and transformers'
loader does not read it either); a Phi-3.5-style file with LongRoPE factor tensors, its original context (256) and
attention factor, exported with the short factors' 256 positions (llama.cpp's logits at its context 256: it takes the
short factors up to the original context); a Phi-4-mini-style file whose ``rope.dimension_count`` is half its head
size (a partial rotary transformers' loader drops); and architectures transformers' loader does not know at all
(export/gguf_architectures.py): Gemma 1 (norms stored as 1 + w, tied head, no rope base), Granite with its
attention, embedding, residual and logit multipliers, a 4-layer SmolLM3 whose 4th layer has no rotary (NoPE),
OLMo 2 (post-norms, q/k norms over the full projections, an untied head), ERNIE 4.5 (rotary on adjacent pairs, its
head size in key_length), EXAONE 4 (post-norms, per-head q/k norms) with a window in its file llama.cpp does not apply
to a 2-layer model, and in 64 layers, where it does (every other layer windowed, the others without rotary); and
three files without a key whose default differs between llama.cpp and transformers (Granite's attention scale,
SmolLM3's and ERNIE 4.5's rope base). And the LayerNorm architectures transformers' loader reads in part: GPT-2 with a
context of 256 (GPT2Config's 1,024-row position table does not take its 256 rows), and one with an MLP of 2 x hidden
(GPT2Config's is 4 x), StableLM 2 with half of each head rotated (transformers' default: a quarter) and q/k/v biases,
one without rope.dimension_count (llama.cpp rotates every dim), one with a rope base of 100 in its file (llama.cpp's
converter writes none: 10000), and one with parallel residuals (no ffn_norm; transformers' loader reads that from the
tensors itself: a layout case, on the fused graph, its quarter rotary turned before GroupQueryAttention). A Llama file
of head size 12 (a layout case: GroupQueryAttention cannot take it, so its graph is the plain one). YaRN, which
transformers' loader drops: Llama, Qwen3 and Qwen2 files (an original context of 32; none, with an attn_factor; 64,
with Qwen2's biases), and OLMo 3 files (architecture olmo2 with a window: its windowed layers by a pattern array, or
the default every 4th global, YaRN on the global layers only).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="GGUF export needs the 'export' extra")
pytest.importorskip("gguf", reason="GGUF export needs the 'export' extra")

import onnxlm  # noqa: E402
from gguf_writers import CASES, IDS, LAYOUT_CASES, write_tiny_gguf  # noqa: E402
from onnxlm.export import ExportError, export_model  # noqa: E402
from onnxlm.export.gguf_architectures import EXTRA  # noqa: E402
from onnxlm.export.gguf_config import config_overrides  # noqa: E402

REFERENCE = json.loads((Path(__file__).parent / "data" / "gguf_llama_cpp" / "reference_logits.json").read_text())
ATOL = 5e-3  # llama.cpp keeps its KV cache in F16; measured max |diff| 1.3e-3 .. 3.2e-3 on these files (OLMo 2's
#            2.8e-3 is 2.1e-6 with llama.cpp's KV cache in F32; EXAONE 4's 64 layers' reference is made with it in F32:
#            8.6e-6, where the F16 cache's reads 6.3e-3)
#: cases without a key whose default differs between llama.cpp and transformers -> the override that restores it
DEFAULT_CASES = {"granite-default-scales": "attention_multiplier", "smollm3-default-rope-base": "rope_theta",
                 "ernie4_5-default-rope-base": "rope_theta"}


@pytest.mark.parametrize("case", list(CASES))
def test_export_of_a_gguf_gives_llama_cpps_logits(tmp_path, case, capfd, monkeypatch):
    """The exported artifact's logits equal llama.cpp's; transformers' loader alone (the settings dropped) is off
    by more than 0.5, or cannot build the model (Qwen3's head size: its default 128 against the file's 16), so each
    restored setting is what makes them equal. A layout case (Phi-3's packed tensors) restores nothing: its fused
    graph, on the packed weights, must give llama.cpp's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tmp_path / f"{case}.gguf"
    want = REFERENCE["cases"][case]
    assert write_tiny_gguf(path, case) == want["sha256"], (
        "tests/gguf_writers.py writes other bytes than the reference was made from: rerun "
        "tests/data/gguf_llama_cpp/make_reference_logits.py")
    llama_cpp = np.array(want["logits"], np.float32)                     # [t, V]
    if case == "phi3-longrope":  # the export says it holds the original context only
        with pytest.warns(UserWarning, match="longrope rotary: the artifact holds 256 positions .* of the model's 1024"):
            model = onnxlm.load(export_model(path, tmp_path / "out", progress=False))
    else:
        model = onnxlm.load(export_model(path, tmp_path / "out", progress=False))
    assert "de-quantizing" not in capfd.readouterr().err  # progress=False: transformers' GGUF bar too
    got = model.logits(np.array([IDS]))[0]
    assert float(np.abs(got - llama_cpp).max()) <= ATOL
    assert model.max_positions == 256  # every file's context; the longrope one's 1024 held to its original 256
    if case == "gemma3-rope-linear":  # Gemma 3 4B+'s linear scaling: the fused graph (--quantize gguf needs it)
        assert model.manifest["kv_layout"] == "fused-gqa"
    if case in LAYOUT_CASES:
        assert model.manifest.get("kv_layout") == LAYOUT_CASES[case]
        return
    load_raw = lambda: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        str(tmp_path), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    if case in ("qwen3-head-dim", "qwen3-yarn", "gpt2", "gpt2-narrow-mlp"):  # Qwen3's head size; GPT-2's position
        # table (256 rows, not 1,024; the narrow MLP's 128 columns, not 256, would fail too: onnxlm's export of it
        # proves them)
        with pytest.raises(RuntimeError, match="size mismatch"):
            load_raw()
        return
    if CASES[case][0] in EXTRA:  # an architecture transformers' loader does not know (export/gguf_architectures.py)
        with pytest.raises(ValueError, match=f"architecture {CASES[case][0]} is not supported yet"):
            load_raw()
        if case in DEFAULT_CASES:  # onnxlm's export with transformers' default instead of llama.cpp's is far off
            import onnxlm.export.gguf_config as gguf_config

            keep = gguf_config.config_overrides
            monkeypatch.setattr(gguf_config, "config_overrides",
                                lambda meta: {k: v for k, v in keep(meta).items() if k != DEFAULT_CASES[case]})
            other = onnxlm.load(export_model(path, tmp_path / "default", progress=False))
            assert float(np.abs(other.logits(np.array([IDS]))[0] - llama_cpp).max()) > 0.5
        return
    raw = load_raw()
    with torch.no_grad():
        dropped = raw(torch.tensor([IDS])).logits[0].numpy()
    assert float(np.abs(dropped - llama_cpp).max()) > 0.5


@pytest.mark.parametrize("case", ["llama-rope-freqs", "ernie4_5"])
def test_a_tensor_the_model_has_no_place_for_is_refused_by_name(tmp_path, case, monkeypatch):
    """q/k/v biases in a file of an architecture without them: transformers' loader would drop them without a word
    (llama.cpp applies them: a tiny ERNIE file with them is 3.6 off its logits so); refused, naming them, before
    its weights load (from the model's meta-device skeleton). Llama 3.1's rope_freqs (read by onnxlm itself) is not
    among them."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("the weights were loaded before the refusal"))
    path = tmp_path / f"{case}.gguf"
    write_tiny_gguf(path, case, extra_tensors={f"blk.0.attn_{p}.bias": np.zeros(n, np.float32)
                                               for p, n in (("q", 64), ("k", 32), ("v", 32))})
    with pytest.raises(ExportError, match=r"3 of the file's tensors have no place in the (llama|ernie4_5) model "
                                          r"transformers builds for it \(blk.0.attn_k.bias, blk.0.attn_q.bias, "
                                          r"blk.0.attn_v.bias\)"):
        export_model(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_fused_only_gguf_refuses_the_plain_layout_before_its_weights_load(tmp_path, no_weight_loads):
    path = tmp_path / "ernie.gguf"
    write_tiny_gguf(path, "ernie4_5")
    with pytest.raises(ExportError, match="kv_layout='plain': model_type 'ernie4_5' has no optimum-onnx export"):
        export_model(path, tmp_path / "out", progress=False, kv_layout="plain")


@pytest.mark.parametrize("arch", [
    "falcon",  # known to transformers' GGUF loader, not a family onnxlm exports
    "exaone",  # unknown to transformers' GGUF loader
])
def test_an_architecture_onnxlm_does_not_export_is_refused_by_name(tmp_path, monkeypatch, arch):
    """Refused from the header (gguf_reader.refuse_architecture) before transformers sees the file, in the same
    words whether transformers knows the architecture or not: the file's architecture and the GGUF architectures
    onnxlm exports (those ``onnxlm info`` lists)."""
    match = (rf"{arch}.gguf: onnxlm does not export GGUF architecture '{arch}' \(its general.architecture\); the GGUF "
             r"architectures it exports: llama, qwen2, qwen3, phi3, gemma, gemma2, gemma3, granite, smollm3, olmo2, "
             r"ernie4_5, exaone4, gpt2, stablelm, lfm2; as embedding models: bert, nomic-bert$")
    monkeypatch.setitem(CASES, arch, (arch, {}, None))
    path = tmp_path / f"{arch}.gguf"
    write_tiny_gguf(path, arch)
    with pytest.raises(ExportError, match=match):
        export_model(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _gemma_meta(arch: str, layers: int, **extra) -> dict:
    return {"general.architecture": arch, f"{arch}.embedding_length": 4608, f"{arch}.attention.head_count": 32,
            f"{arch}.attention.key_length": 128, f"{arch}.block_count": layers, **extra}


def test_query_scale_follows_llama_cpps_rule():
    """1/sqrt(head_dim), except the 27B models (46 layers Gemma 2, 62 Gemma 3): 1/sqrt(hidden / heads)."""
    assert config_overrides(_gemma_meta("gemma2", 46))["query_pre_attn_scalar"] == 4608 // 32
    assert config_overrides(_gemma_meta("gemma2", 42))["query_pre_attn_scalar"] == 128
    assert config_overrides(_gemma_meta("gemma3", 62))["query_pre_attn_scalar"] == 4608 // 32
    assert config_overrides({"general.architecture": "llama"}) == {}


def test_an_unsupported_rope_scaling_is_refused_by_name():
    meta = _gemma_meta("gemma3", 34, **{"gemma3.rope.scaling.type": "yarn", "gemma3.rope.scaling.factor": 4.0})
    with pytest.raises(ExportError, match="rope.scaling.type = 'yarn'"):
        config_overrides(meta)
    meta["gemma3.rope.scaling.type"] = "linear"
    assert config_overrides(meta)["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}


def test_rope_scaling_is_read_as_llama_cpp_reads_it():
    """No type: linear (llama.cpp's default); the factor from rope.scaling.factor, else the older rope.scale_linear
    (16K Vicuna-style files); type none, or a factor of 0 or 1, scales nothing."""
    base = _gemma_meta("gemma3", 34)
    for extra, want in (({"gemma3.rope.scaling.factor": 8.0}, 8.0), ({"gemma3.rope.scale_linear": 4.0}, 4.0),
                        ({"gemma3.rope.scaling.factor": 2.0, "gemma3.rope.scale_linear": 4.0}, 2.0),
                        ({"gemma3.rope.scaling.type": "none", "gemma3.rope.scaling.factor": 8.0}, None),
                        ({"gemma3.rope.scaling.factor": 0.0}, None), ({}, None)):
        got = config_overrides({**base, **extra}).get("rope_scaling")
        assert got == (None if want is None else {"rope_type": "linear", "factor": want}), extra


def test_longrope_factors_without_the_original_context_are_refused(tmp_path):
    """A LongRoPE file (Phi-3.5, Phi-3 128k) missing ``rope.scaling.original_context_length`` (which decides where
    the short factors hold): refused by name, nothing written."""
    path = tmp_path / "phi3-longrope.gguf"
    write_tiny_gguf(path, "phi3-longrope", drop=("rope.scaling.original_context_length",))
    with pytest.raises(ExportError, match="LongRoPE factors without phi3.rope.scaling.original_context_length"):
        export_model(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_architectures_transformers_lacks_are_known_to_it_only_while_a_file_loads(tmp_path):
    """gguf_architectures.known_to_transformers adds Gemma 1, Granite, SmolLM3 and OLMo 2 to transformers' GGUF tables
    (and the olmo3 -> olmo2 alias to its weight map) and takes them out again, also when the load fails; onnxlm info
    calls such a file exported."""
    from transformers import modeling_gguf_pytorch_utils as loader
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from onnxlm.export.gguf_architectures import known_to_transformers
    from onnxlm.export.gguf_summary import summarize_gguf

    def tables():
        return (dict(GGUF_CONFIG_MAPPING), list(loader.GGUF_SUPPORTED_ARCHITECTURES), dict(loader.TENSOR_PROCESSORS),
                loader.get_gguf_hf_weights_map)

    before = tables()
    assert not set(EXTRA) & set(before[0])
    with pytest.raises(KeyError, match="a failed load"):
        with known_to_transformers():
            assert set(EXTRA) <= set(GGUF_CONFIG_MAPPING) & set(loader.GGUF_SUPPORTED_ARCHITECTURES)
            assert loader.get_gguf_hf_weights_map.__wrapped__ is before[3]  # OLMo 3's weights under OLMo 2's names
            assert loader.TENSOR_PROCESSORS["gemma"] is loader.Gemma2TensorProcessor
            assert GGUF_CONFIG_MAPPING["granite"]["logit_scale"] == "logits_scaling"
            raise KeyError("a failed load")
    assert tables() == before
    path = tmp_path / "gemma.gguf"
    write_tiny_gguf(path, "gemma")
    summary = summarize_gguf(path)
    assert (summary["architecture"], summary["exported"], summary["refused"]) == ("gemma", True, None)


def test_loads_in_two_threads_share_the_registration():
    """Thread A opens load_gguf's two patches of transformers' and gguf's globals, B opens them, A closes: B's load
    still finds the architectures and the shared reader; both go back as they were when B closes."""
    import threading

    import gguf
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from onnxlm.export.gguf_architectures import known_to_transformers
    from onnxlm.export.gguf_reader import readers_shared_with_transformers

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    a_in, b_in, a_out, seen = threading.Event(), threading.Event(), threading.Event(), []

    def a():
        with readers_shared_with_transformers(), known_to_transformers():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with readers_shared_with_transformers(), known_to_transformers():
            b_in.set()
            a_out.wait(10)
            seen.append(("granite" in GGUF_CONFIG_MAPPING, gguf.GGUFReader is not reader))

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == [(True, True)] and "granite" not in GGUF_CONFIG_MAPPING
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)


def test_a_granite_file_without_attention_scale_scales_queries_as_llama_cpp():
    """llama.cpp scales a Granite file's queries by 1/sqrt(head size) when it has no attention.scale; transformers'
    GraniteConfig would keep its default multiplier 1.0."""
    meta = {"general.architecture": "granite", "granite.embedding_length": 64, "granite.attention.head_count": 4}
    assert config_overrides(meta)["attention_multiplier"] == 16 ** -0.5
    assert "attention_multiplier" not in config_overrides({**meta, "granite.attention.scale": 0.3})


def test_a_gemma3_file_without_rope_base_rotates_as_llama_cpp():
    """llama.cpp's rope base without the key is 10000; Gemma3TextConfig's 1,000,000 (its global layers)."""
    meta = {"general.architecture": "gemma3", "gemma3.embedding_length": 64, "gemma3.attention.head_count": 4,
            "gemma3.block_count": 2}
    assert config_overrides(meta)["rope_theta"] == 10000.0
    assert "rope_theta" not in config_overrides({**meta, "gemma3.rope.freq_base": 1e6})


@pytest.mark.parametrize("case,dropped", [("olmo3", "window"), ("olmo3", "yarn"), ("qwen3-yarn", "yarn")])
def test_a_window_or_yarn_read_from_the_file_is_what_makes_its_logits_llama_cpps(tmp_path, monkeypatch, case,
                                                                                 dropped):
    """The windowed layers and the YaRN read from a file (``test_export_of_a_gguf_gives_llama_cpps_logits``) are
    each what makes its logits llama.cpp's: exported without them they are far off (0.34 and more; Qwen3's case has
    no transformers load to compare: its head size)."""
    import onnxlm.export.gguf_config as gguf_config

    path = tmp_path / f"{case}.gguf"
    write_tiny_gguf(path, case)
    llama_cpp = np.array(REFERENCE["cases"][case]["logits"], np.float32)
    keep = gguf_config.config_overrides
    drop = {"window": lambda o: {**o, "layer_types": ["full_attention"] * len(o["layer_types"])},
            "yarn": lambda o: {k: v for k, v in o.items() if k != "rope_scaling"}}[dropped]
    monkeypatch.setattr(gguf_config, "config_overrides", lambda meta: drop(keep(meta)))
    other = onnxlm.load(export_model(path, tmp_path / "out", progress=False))
    assert float(np.abs(other.logits(np.array([IDS]))[0] - llama_cpp).max()) > 20 * ATOL


def test_an_olmo3_file_exports_as_olmo3(tmp_path):
    """An OLMo 3 GGUF (general.architecture olmo2 with a sliding window, YaRN) exports as model_type olmo3, the fused
    graph, needing onnxruntime 1.24 (its window), with llama.cpp's logits; onnxlm info says it exports. Its windowed layers are read as llama.cpp reads the pattern (an array, every n-th global, 0, none:
    every 4th global); a YaRN factor of 1 or below, and a head size its fused graph (its only one) cannot take, are
    refused by name from the header."""
    from onnxlm.export.gguf_summary import summarize_gguf

    path = tmp_path / "olmo3.gguf"
    write_tiny_gguf(path, "olmo3")
    llama_cpp = np.array(REFERENCE["cases"]["olmo3"]["logits"], np.float32)
    model = onnxlm.load(export_model(path, tmp_path / "out", progress=False))
    assert float(np.abs(model.logits(np.array([IDS]))[0] - llama_cpp).max()) <= ATOL
    m = model.manifest
    assert (m["model_type"], m["kv_layout"], m["requires"]) == ("olmo3", "fused-gqa", {"onnxruntime": "1.24"})
    summary = summarize_gguf(path)
    assert summary["exported"] and summary["refused"] is None
    meta = {"general.architecture": "olmo2", "olmo2.block_count": 4, "olmo2.attention.sliding_window": 8,
            "olmo2.context_length": 256, "olmo2.embedding_length": 64, "olmo2.attention.head_count": 4}
    for pattern, want in (([False, True, True, False], "FSSF"), (2, "SFSF"), (0, "SSSS"), (None, "SSSF")):
        got = config_overrides({**meta, "olmo2.attention.sliding_window_pattern": pattern} if pattern is not None
                               else meta)  # llama.cpp's set_swa_pattern for an integer, every 4th global without
        assert got["model_type"] == "olmo3" and got["sliding_window"] == 8
        assert "".join(t[0].upper() for t in got["layer_types"]) == want, pattern
    with pytest.raises(ExportError, match="sliding_window_pattern: 3 entries for 4 layers"):
        config_overrides({**meta, "olmo2.attention.sliding_window_pattern": [True, True, False]})
    with pytest.raises(ExportError, match="'yarn' with factor 1.0: onnxlm reads YaRN from GGUF with a factor above 1"):
        config_overrides({**meta, "olmo2.rope.scaling.type": "yarn", "olmo2.rope.scaling.factor": 1.0})
    with pytest.raises(ExportError, match="head size 24 is not a multiple of 16, .* model_type 'olmo3' has no other"):
        config_overrides({**meta, "olmo2.embedding_length": 96})  # before any weight loads (a head GQA rotates)
    with pytest.MonkeyPatch.context() as mp:  # YaRN elsewhere is still refused by name
        mp.setitem(CASES, "gemma3-yarn", ("gemma3", {"rope.scaling.type": "yarn", "rope.scaling.factor": 8.0}, None))
        write_tiny_gguf(tmp_path / "gemma3-yarn.gguf", "gemma3-yarn")
    with pytest.raises(ExportError, match="gemma3.rope.scaling.type = 'yarn' .* not supported for GGUF files"):
        export_model(tmp_path / "gemma3-yarn.gguf", tmp_path / "refused", progress=False)