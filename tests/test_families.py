"""Every model_type ``onnxlm export`` accepts is exported from a tiny random-weight recipe and checked against
transformers on the same weights: logits on a left-padded batch, then steps with past (<= 1e-4); greedy and beam
(num_beams=3) ids equal to ``generate`` on a left-padded batch of 3 (T5: a right-padded encoder batch of 3).

The recipes live in models/recipes/families/<name>/recipe.json (one per graph-changing variant; exportable with
``onnxlm export models/recipes/families/<name> OUT``); the base recipes tiny-gpt2 (tied head), tiny-t5 (relu, untied
head) and tiny-llama (GQA, tied head) are reused through conftest's session fixtures. Each recipe is built and exported
once (module-scoped fixture, one instance per recipe) with validate=False: the exporter's validation (batch of 1, a step
with past, a left-padded batch of 2 + a step) is a subset of what these tests check, so it would only cost time.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="family tests need the 'export' extra")
pytest.importorskip("optimum.exporters.onnx", reason="family tests need the 'export' extra")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM  # noqa: E402

import onnxlm  # noqa: E402
from conftest import RECIPES, TinyModel, _tiny  # noqa: E402
from onnxlm.export import ExportError, export_model  # noqa: E402
from onnxlm.export.onnx_export import (FUSED_ONLY_TYPES, GPT2_TYPES, LLAMA_TYPES, SUPPORTED_FAMILIES,  # noqa: E402
                                       T5_TYPES)
from torch_ref import (causal_logits, left_padded_batch, right_padded_batch,  # noqa: E402
                       seq2seq_steps_max_diff)

ATOL = 1e-4
NEW = 6  # new tokens per generate call
PROMPTS = [7, 3, 5]  # left-padded batch of 3: prompt + NEW = 13 > the mistral recipe's sliding_window (4)
FAMILY_DIR = RECIPES / "families"
BASE = {"tiny-gpt2": "tiny_gpt2", "tiny-t5": "tiny_t5", "tiny-llama": "tiny_llama"}  # recipe -> conftest fixture
QK_LAYERNORM = "tiny-stablelm-qk-layernorm"  # built in the test from tiny-stablelm (see _stablelm_qk_layernorm)
NAMES = sorted(BASE) + sorted(p.name for p in FAMILY_DIR.iterdir() if (p / "recipe.json").is_file())


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2-layer, 64-wide models


def recipe_dir(name: str):
    return RECIPES / name if name in BASE else FAMILY_DIR / name


def recipe_config(name: str) -> dict:
    return json.loads((recipe_dir(name) / "recipe.json").read_text())["config"]


def reference(art: TinyModel):
    """The transformers model on the artifact's weights, with the attention implementation the exporter traced."""
    from onnxlm.export.onnx_export import attn_implementation_for

    config = AutoConfig.from_pretrained(art.hf_dir)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    kw = {}
    impl = attn_implementation_for(config)
    if impl is not None:
        kw["attn_implementation"] = impl
    return auto.from_pretrained(art.hf_dir, **kw).eval()


def _stablelm_qk_layernorm(tmp_path_factory) -> TinyModel:
    """tiny-stablelm with qk_layernorm=True. Not a recipe: transformers 4.57 cannot build it from a config (its
    _init_weights touches the bias of the bias-free per-head LayerNorms), so the tiny-stablelm weights are reused and
    the per-head norm weights drawn from a fixed seed."""
    from transformers.models.stablelm import modeling_stablelm

    from onnxlm.export.recipes import build_recipe

    base = tmp_path_factory.mktemp(QK_LAYERNORM)
    hf_dir = build_recipe(FAMILY_DIR / "tiny-stablelm", base / "hf")
    plain = AutoModelForCausalLM.from_pretrained(hf_dir)
    config = plain.config.__class__.from_dict({**plain.config.to_dict(), "qk_layernorm": True})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modeling_stablelm.StableLmPreTrainedModel, "_init_weights", lambda self, module: None)
        model = modeling_stablelm.StableLmForCausalLM(config).eval()
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all("q_layernorm" in k or "k_layernorm" in k for k in missing)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in missing:
            p = model.get_parameter(k)
            p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(hf_dir)
    onnx_dir = export_model(hf_dir, base / "onnx", progress=False, validate=False, kv_layout="plain")
    return TinyModel(QK_LAYERNORM, None, hf_dir, onnx_dir)


#: the recipes of model_types optimum-onnx cannot export (onnx_export.FUSED_ONLY_TYPES): their only graph, the fused
#: one, is proved against transformers by tests/test_fused_layouts.py; here their plain export is refused by name
FUSED_ONLY = [n for n in NAMES if recipe_config(n)["model_type"] in FUSED_ONLY_TYPES]


@pytest.fixture(scope="module", params=[n for n in NAMES if n not in FUSED_ONLY] + [QK_LAYERNORM])
def family(request, tmp_path_factory):
    name = request.param
    if name in BASE:
        art = request.getfixturevalue(BASE[name])
    elif name == QK_LAYERNORM:
        art = _stablelm_qk_layernorm(tmp_path_factory)
    else:
        art = _tiny(tmp_path_factory, name, FAMILY_DIR / name, validate=False)
    return name, onnxlm.load(art.onnx_dir), reference(art)


def test_every_accepted_model_type_has_a_recipe():
    """The accepted list is exactly the tested list: each model_type family_of accepts has a recipe here."""
    tested = {recipe_config(n)["model_type"] for n in NAMES}
    assert tested == GPT2_TYPES | T5_TYPES | LLAMA_TYPES


@pytest.mark.parametrize("name", FUSED_ONLY)
def test_a_fused_only_family_refuses_the_plain_layout_by_name(name, tmp_path, request):
    from onnxlm.export.recipes import build_recipe

    hf = build_recipe(FAMILY_DIR / name, tmp_path / "hf")
    request.getfixturevalue("no_weight_loads")  # from here on: both refused before any weight loads
    model_type = recipe_config(name)["model_type"]
    for source in (hf, FAMILY_DIR / name):  # a checkpoint (config.json), a recipe (recipe.json)
        with pytest.raises(ExportError, match=f"kv_layout='plain': model_type '{model_type}' has no optimum-onnx "
                                              "export; it exports as the fused graph only"):
            export_model(source, tmp_path / "out", progress=False, kv_layout="plain")
        with pytest.raises(ExportError, match=f"opset: model_type '{model_type}' exports as the fused graph only"):
            export_model(source, tmp_path / "out", progress=False, opset=17)  # "auto": no plain graph to fall to
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", FUSED_ONLY)
def test_a_fused_only_family_the_fused_builder_refuses_says_there_is_no_other_graph(name, tmp_path):
    from onnxlm.export.recipes import build_recipe

    model_type = recipe_config(name)["model_type"]
    hf = build_recipe(FAMILY_DIR / name, tmp_path / "hf")
    # a head size GQA cannot take (a multiple of 8 it needs): 20, set as each config holds it (Exaone4Config has no
    # head_dim: hidden / heads; nor do Olmo3Config and Lfm2Config)
    odd = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(
        hf, **({"hidden_size": 80} if model_type in ("exaone4", "lfm2", "olmo3") else {"head_dim": 20})))
    with pytest.raises(ExportError, match=f"head_dim 20 is not a multiple of 8.*model_type '{model_type}' has no other "
                                          "graph: optimum-onnx cannot export it"):
        export_model(odd, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_readme_lists_the_families_exactly_as_tested():
    """The README's Families bullet names every accepted model_type, and no other transformers model_type except
    as refused."""
    import re

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    readme = (RECIPES.parents[1] / "README.md").read_text(encoding="utf-8")
    bullet = readme[readme.index("- **Families**"):readme.index("- **Graphs**")]
    listed, refused = bullet.split("Any other")
    named = set(re.findall(r"`([a-z0-9_]+)`", listed)) & set(CONFIG_MAPPING_NAMES)
    assert named == GPT2_TYPES | T5_TYPES | LLAMA_TYPES
    assert not set(re.findall(r"`([a-z0-9_]+)`", refused)) & named


def _causal_batch(ours, seed):
    return left_padded_batch(np.random.default_rng(seed), PROMPTS, ours.vocab_size - 4, ours.pad_id)


def test_logits_left_padded_batch_then_steps_with_past(family):
    name, ours, ref = family
    if ours.is_encoder_decoder:
        eos = ours.generation_config.eos_token_ids[0]
        src, src_mask = right_padded_batch(np.random.default_rng(1), [6, 3, 8], ours.vocab_size - 4, ours.pad_id, eos)
        rng = np.random.default_rng(2)
        steps = [rng.integers(3, ours.vocab_size - 4, size=3) for _ in range(2)]  # first step + 2 with past
        assert seq2seq_steps_max_diff(ours, ref, src, src_mask, steps) <= ATOL
        return
    ids, mask = _causal_batch(ours, seed=1)
    on = mask.astype(bool)
    assert np.abs(ours.logits(ids, mask)[on] - causal_logits(ref, ids, mask)[on]).max() <= ATOL  # whole prompt
    state, logits = ours.start(ids, mask)
    assert np.abs(logits - causal_logits(ref, ids, mask)[:, -1]).max() <= ATOL  # prefill, past length 0
    rng = np.random.default_rng(2)
    for _ in range(2):  # steps with past vs transformers on the full sequence
        tokens = rng.integers(3, ours.vocab_size - 4, size=3)
        ids = np.concatenate([ids, tokens[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
        logits = state.advance(tokens)
        assert np.abs(logits - causal_logits(ref, ids, mask)[:, -1]).max() <= ATOL


@torch.no_grad()
def _hf_generate(ref, ids, mask, **kw):
    return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                        max_new_tokens=NEW, eos_token_id=None, **kw).numpy()


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_generate_ids_equal_transformers(family, num_beams):
    name, ours, ref = family
    if ours.is_encoder_decoder:
        eos = ours.generation_config.eos_token_ids[0]
        ids, mask = right_padded_batch(np.random.default_rng(3), [6, 3, 8], ours.vocab_size - 4, ours.pad_id, eos)
    else:
        ids, mask = _causal_batch(ours, seed=3)
    # no EOS: every row runs the full length (the tiny random models rarely emit it anyway)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, num_beams=num_beams, eos_token_id=[],
                        pad_token_id=ours.pad_id)
    want = _hf_generate(ref, ids, mask, num_beams=num_beams, pad_token_id=ours.pad_id)
    np.testing.assert_array_equal(got.sequences, want)
    assert got.finish_reasons == ["length"] * 3


def _logits_without(name: str, **override) -> tuple[np.ndarray, np.ndarray]:
    """transformers logits of recipe ``name`` on a left-padded batch of PROMPTS + NEW tokens, as the recipe says and
    with ``override`` applied to the config (same weights)."""
    from onnxlm.export.recipes import instantiate_recipe

    from onnxlm.export.onnx_export import attn_implementation_for

    model = instantiate_recipe(recipe_dir(name))[0]
    impl = attn_implementation_for(model.config) or model.config._attn_implementation
    model.set_attn_implementation(impl)
    config = model.config.__class__.from_dict({**model.config.to_dict(), **override})
    other = model.__class__(config).eval()
    other.set_attn_implementation(impl)
    other.load_state_dict(model.state_dict(), strict=False)  # strict=False: an override may drop a bias
    ids, mask = left_padded_batch(np.random.default_rng(0), [p + NEW for p in PROMPTS], 256, 256)
    return causal_logits(model, ids, mask)[mask == 1], causal_logits(other, ids, mask)[mask == 1]


@pytest.mark.parametrize("name,override", [
    ("tiny-mistral-sliding-window", {"sliding_window": None}),
    ("tiny-gpt2-untied-inverse-layer-scale", {"scale_attn_by_inverse_layer_idx": False}),
    ("tiny-llama-llama3-rope-bias-untied", {"rope_scaling": None}),
    ("tiny-llama-llama3-rope-bias-untied", {"attention_bias": False, "mlp_bias": False}),
    ("tiny-stablelm", {"use_qkv_bias": False}),
    ("tiny-llama-linear-rope", {"rope_scaling": None}),
    ("tiny-llama-yarn-rope", {"rope_scaling": None}),
    ("tiny-smollm3", {"no_rope_layers": [1, 1]}),
    ("tiny-phi3", {"partial_rotary_factor": 1.0}),
    ("tiny-phi3", {"sliding_window": None}),
    ("tiny-phi3-longrope", {"rope_scaling": None}),
    ("tiny-qwen2", {"use_sliding_window": False, "layer_types": ["full_attention"] * 2}),
    ("tiny-gemma2", {"attn_logit_softcapping": None}),
    ("tiny-gemma2", {"final_logit_softcapping": None}),
    ("tiny-gemma2", {"layer_types": ["full_attention"] * 2}),
    ("tiny-gemma2", {"query_pre_attn_scalar": 16}),
    ("tiny-gemma3-text", {"layer_types": ["full_attention"] * 2}),
    ("tiny-gemma3-text", {"rope_local_base_freq": 1000000.0}),
    ("tiny-gemma3-text", {"rope_scaling": None}),
    ("tiny-olmo3", {"layer_types": ["full_attention"] * 2}),
    ("tiny-olmo3", {"rope_scaling": None}),
    ("tiny-granite", {"embedding_multiplier": 1.0, "residual_multiplier": 1.0, "attention_multiplier": 0.25,
                      "logits_scaling": 1.0}),
])
def test_variant_changes_the_logits(name, override):
    """The recipes' variants matter at the tested lengths, so the parity tests above really exercise them."""
    want, other = _logits_without(name, **override)
    assert np.abs(want - other).max() > 1e-3


@pytest.mark.parametrize("model_type,rope_scaling", [
    ("llama", {"rope_type": "dynamic", "factor": 2.0}),
    ("llama", {"type": "dynamic", "factor": 2.0}),  # the legacy spelling
], ids=["dynamic", "dynamic-legacy-key"])
def test_run_time_rope_scaling_is_refused(tmp_path, model_type, rope_scaling):
    """dynamic recomputes the frequencies from the sequence length at run time (transformers' dynamic_rope_update),
    which a graph freezes: refused, naming the supported types (longrope does so only past its original context,
    which an export does not hold: tests/test_fused_layouts.py)."""
    config = AutoConfig.for_model(model_type, vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, max_position_embeddings=16, original_max_position_embeddings=8,
                                  pad_token_id=256, rope_scaling=rope_scaling)
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    with pytest.raises(ExportError, match=f"rope_scaling.*'{kind}'.*supported rope_scaling types: default, linear"):
        export_model(AutoModelForCausalLM.from_config(config).eval(), tmp_path / "out", progress=False, validate=False)
    assert not (tmp_path / "out").exists()


def test_unsupported_model_type_names_the_supported_families(tmp_path):
    from transformers import UMT5Config, UMT5ForConditionalGeneration

    model = UMT5ForConditionalGeneration(UMT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                    num_heads=2))
    with pytest.raises(ExportError, match="'umt5' is not supported") as e:
        export_model(model, tmp_path / "out", progress=False)
    assert SUPPORTED_FAMILIES in str(e.value)


def test_eager_only_gpt2_options_trace_eager_and_restore_the_callers_setting(tmp_path):
    """scale_attn_by_inverse_layer_idx: transformers' SDPA path drops it, so the export traces eager (the parity
    tests above compare against eager) and hands a passed model back with its own attention implementation."""
    from onnxlm.export.recipes import instantiate_recipe

    model, tok, *_ = instantiate_recipe(recipe_dir("tiny-gpt2-untied-inverse-layer-scale"))
    assert model.config._attn_implementation == "sdpa"
    export_model(model, tmp_path / "out", progress=False, validate=False, tokenizer=tok, kv_layout="plain")
    assert model.config._attn_implementation == "sdpa"
