"""The fused KV layout (runtime/fused/: our GroupQueryAttention graphs with in-place KV buffers) against transformers
on the same weights, for every family the fused builders cover: the same checks over each, then what only one family
has.

Families and recipes (each exported once per session, validated by export/validate_fused.py):
* Llama (export/fused_llama.py, ``kv_layout="fused"``): tiny-llama (GQA, tied head: the embedding is stored once),
  tiny-mistral-sliding-window (window 4, shorter than every sequence here: proves GQA's local_window_size =
  sliding_window), tiny-qwen2 (q/k/v bias, per-layer window), tiny-llama-llama3-rope-bias-untied (llama3 rope scaling,
  attention + MLP bias, untied head), tiny-qwen3 (per-head q/k RMSNorm, head_dim 32 != hidden / heads, untied head), tiny-phi3-full-rotary (packed
  qkv and gate_up weights, window 5), tiny-phi3-longrope (longrope: 64 positions, its short factors), tiny-phi3-partial-longrope (Phi-4-mini's shape: 48
  of 64 head dims rotated, longrope), tiny-granite (embedding, attention, residual and logits multipliers, untied
  head), tiny-smollm3 (its second layer without the rotary: NoPE), tiny-olmo2 (post-norms, q/k normed over their full
  width), tiny-ernie4_5 (rotary on adjacent pairs: GQA's interleaved rotary; head_dim 32 != hidden / heads),
  tiny-exaone4 (post-norms with per-head q/k norms; a window of 4 on its first layer, its second global without
  rotary).
* StableLM (export/fused_llama.py, ``kv_layout="fused"``): tiny-stablelm2 (StableLM 2 1.6B's shape: LayerNorms with
  bias, 16 of 64 head dims rotated, q/k/v bias, untied head), tiny-stablelm-parallel-full-rotary (attention and MLP
  from the same LayerNorm, added to the residual together; every head dim rotated); tiny-stablelm and
  tiny-stablelm-parallel-residual (a quarter of 16-dim heads rotated, 4 dims, which GQA cannot take: StableLM 3B's
  kind, turned before it by RotaryEmbedding at the graph's ``position_ids``).
* GPT-2 (export/fused_gpt2.py, the default ``kv_layout="auto"``, which must pick the fused graph; learned positions fed
  as ``position_ids``): tiny-gpt2 (tied: wte stored once), tiny-gpt2-untied-inverse-layer-scale (untied head, scores of
  layer i divided by i + 1: compared with transformers' eager attention, the only one that honours it).
* Gemma (export/fused_gemma.py, ``kv_layout="fused"``): tiny-gemma ((1 + w) norms, scaled embeddings, GeGLU),
  tiny-gemma2 (attention and final-logit soft-capping: compared with transformers' eager attention; a sliding-window
  layer of 4 beside a global one), tiny-gemma3-text (q/k norms, local/global layers with their own rotary bases).
* T5 (export/fused_t5.py, ``"auto"``: encoder giving the cross keys/values once; decoder self-attention in
  GroupQueryAttention on in-place buffers + relative position bias, cross-attention in MultiHeadAttention):
  tiny-t5 (relu, untied head), tiny-t5-gated-gelu-tied (gated gelu_new, tied head scaled by d_model ** -0.5).
Causal batches are left padded; T5's encoder batches are right padded and end in EOS.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

pytest.importorskip("torch", reason="fused tests need the 'export' extra")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers import T5ForConditionalGeneration  # noqa: E402

import onnxlm  # noqa: E402
from conftest import RECIPES, export_recipes, fused_manifest  # noqa: E402
from onnxlm.export import ExportError, export_model  # noqa: E402
from onnxlm.export.fused import fused_supported  # noqa: E402
from onnxlm.export.onnx_export import attn_implementation_for  # noqa: E402
from onnxlm.runtime.errors import InputError  # noqa: E402
from onnxlm.runtime.fused import FusedCausalLM, FusedHybridLM, FusedSeq2SeqLM  # noqa: E402
from torch_ref import (assert_beam_equal, causal_logits, causal_steps_max_diff, left_padded_batch,  # noqa: E402
                       pad_blind, right_padded_batch, seq2seq_logits, seq2seq_steps_max_diff)

ATOL = 1e-4
NEW = 6
LENGTHS = [7, 3, 5]  # a batch of 3 rows (7 + NEW > the mistral window, 4)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------------ the families
def _causal_reference(hf):
    """transformers on the same weights, with the attention whose semantics the graph follows."""
    impl = attn_implementation_for(AutoConfig.from_pretrained(hf))
    return AutoModelForCausalLM.from_pretrained(hf, **({"attn_implementation": impl} if impl else {})).eval()


def _causal_batch(ours, seed):  # -> ids, mask [3, 7] left padded
    return left_padded_batch(np.random.default_rng(seed), LENGTHS, ours.vocab_size - 4, ours.pad_id)


def _seq2seq_batch(ours, seed):  # -> encoder ids, mask [3, 7] right padded, each row ending in EOS
    eos = ours.generation_config.eos_token_ids[0]
    return right_padded_batch(np.random.default_rng(seed), LENGTHS, ours.vocab_size - 4, ours.pad_id, eos)


def _causal_logits_diff(ours, ref) -> float:
    """max |diff| of every attended prompt position's logits, then of start and 3 steps with past."""
    ids, mask = _causal_batch(ours, seed=1)
    on = mask.astype(bool)
    diff = np.abs(ours.logits(ids, mask)[on] - causal_logits(ref, ids, mask)[on]).max()
    rng = np.random.default_rng(2)
    steps = [rng.integers(3, ours.vocab_size - 4, size=3) for _ in range(3)]
    return max(diff, causal_steps_max_diff(ours, ref, ids, mask, steps))


def _seq2seq_logits_diff(ours, ref) -> float:
    """max |diff| of every decoder position's logits (start token + 4), then of start and 4 steps with past."""
    src, mask = _seq2seq_batch(ours, seed=1)
    rng = np.random.default_rng(2)
    dec = np.concatenate([ours.initial_sequences(src), rng.integers(3, ours.vocab_size - 4, size=(3, 4))], axis=1)
    diff = np.abs(ours.logits(src, dec, mask) - seq2seq_logits(ref, src, mask, dec)).max()
    steps = [rng.integers(3, ours.vocab_size - 4, size=3) for _ in range(4)]
    return max(diff, seq2seq_steps_max_diff(ours, ref, src, mask, steps))


@dataclass(frozen=True)
class Family:
    """What differs between the fused families; every test below reads only these."""

    fixture: str                 # conftest's plain tiny model (its checkpoint is reused, its artifact is the plain twin)
    recipes: list
    export_kw: dict
    model_class: type
    reference: Callable          # hf dir -> transformers model
    batch: Callable              # (ours, seed) -> prompt ids, mask
    logits_diff: Callable        # (ours, ref) -> max |diff|
    pad_kw: Callable             # ours -> the pad_token_id argument the causal families pass
    cross_attention: int = 0     # MultiHeadAttention nodes per decoder graph
    position_ids: bool = False   # the graph takes positions: GPT-2's learned ones, a rotary turned before GQA
    score_args: dict = field(default_factory=dict)


FAMILIES = {
    "llama": Family("tiny_llama", ["tiny-llama", "families/tiny-mistral-sliding-window", "families/tiny-qwen2",
                                   "families/tiny-llama-llama3-rope-bias-untied", "families/tiny-qwen3",
                                   "families/tiny-phi3-full-rotary", "families/tiny-phi3-longrope",
                                   "families/tiny-phi3-partial-longrope", "families/tiny-granite",
                                   "families/tiny-smollm3", "families/tiny-olmo2", "families/tiny-olmo3",
                                   "families/tiny-ernie4_5",
                                   "families/tiny-exaone4"],
                    {"kv_layout": "fused"},
                    FusedCausalLM, _causal_reference, _causal_batch, _causal_logits_diff,
                    lambda ours: {"pad_token_id": ours.pad_id}),
    "stablelm": Family("tiny_llama", ["families/tiny-stablelm2", "families/tiny-stablelm-parallel-full-rotary"],
                       {"kv_layout": "fused"}, FusedCausalLM, _causal_reference, _causal_batch, _causal_logits_diff,
                       lambda ours: {"pad_token_id": ours.pad_id}),
    # a partial rotary GroupQueryAttention cannot take (4 of 16 dims), turned before it at the graph's position_ids
    "stablelm-rotary-outside": Family("tiny_llama", ["families/tiny-stablelm",
                                                     "families/tiny-stablelm-parallel-residual"],
                                      {"kv_layout": "fused"}, FusedCausalLM, _causal_reference, _causal_batch,
                                      _causal_logits_diff, lambda ours: {"pad_token_id": ours.pad_id},
                                      position_ids=True),
    # LFM2: convolution layers beside GQA ones; transformers' left-padded batch reads its pad tokens' embeddings, so
    # the reference's pad embedding is zero (torch_ref.pad_blind: each row's logits are then the row's alone)
    "lfm2": Family("tiny_llama", ["families/tiny-lfm2", "families/tiny-lfm2-conv-bias"], {"kv_layout": "fused"}, FusedHybridLM,
                   lambda hf: pad_blind(_causal_reference(hf), AutoConfig.from_pretrained(hf).pad_token_id),
                   _causal_batch, _causal_logits_diff,
                   lambda ours: {"pad_token_id": ours.pad_id}),
    "gpt2": Family("tiny_gpt2", ["tiny-gpt2", "families/tiny-gpt2-untied-inverse-layer-scale"], {},
                   FusedCausalLM, _causal_reference, _causal_batch, _causal_logits_diff,
                   lambda ours: {"pad_token_id": ours.pad_id}, position_ids=True),
    "gemma": Family("tiny_llama", ["families/tiny-gemma", "families/tiny-gemma2", "families/tiny-gemma3-text"],
                    {"kv_layout": "fused"}, FusedCausalLM, _causal_reference, _causal_batch, _causal_logits_diff,
                    lambda ours: {"pad_token_id": ours.pad_id}),
    "t5": Family("tiny_t5", ["tiny-t5", "families/tiny-t5-gated-gelu-tied"], {}, FusedSeq2SeqLM,
                 lambda hf: T5ForConditionalGeneration.from_pretrained(hf).eval(), _seq2seq_batch,
                 _seq2seq_logits_diff, lambda ours: {}, cross_attention=2,
                 score_args={"targets": ["hi", "a b c", "x"]}),
}
CASES = [(family, recipe) for family, spec in FAMILIES.items() for recipe in spec.recipes]
#: the recipes conftest also exports plain (tiny-llama, tiny-gpt2, tiny-t5); Gemma's fixture only lends its checkpoint
BASES = [(family, FAMILIES[family].recipes[0]) for family in ("llama", "gpt2", "t5")]
CAUSAL_BASES = [case for case in BASES if FAMILIES[case[0]].model_class is FusedCausalLM]


def _id(case):
    return case[1].split("/")[-1]


@pytest.fixture(scope="session")
def fused_dirs(request, tmp_path_factory):
    """recipe name -> (hf dir, fused artifact dir), every family's recipes; the base recipes reuse conftest's
    checkpoints."""
    out = {}
    for spec in FAMILIES.values():
        out.update(export_recipes(tmp_path_factory, spec.recipes, request.getfixturevalue(spec.fixture),
                                  **spec.export_kw))
    return out


@pytest.fixture(scope="module", params=CASES, ids=_id)
def fused(request, fused_dirs):
    """(family spec, our model, transformers on the same weights), one recipe at a time."""
    family, recipe = request.param
    spec = FAMILIES[family]
    hf, art = fused_dirs[recipe]
    return spec, onnxlm.load(art), spec.reference(hf)


@torch.no_grad()
def _hf_generate(ref, ids, mask, new=NEW, **kw):
    return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                        max_new_tokens=new, eos_token_id=None, return_dict_in_generate=True, output_scores=True,
                        **kw)


# -------------------------------------------------------------------------------------------- every family, every recipe
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_artifact_is_the_fused_graph(fused_dirs, case):
    """kv_layout fused-gqa, validation passed, the fused class; one GroupQueryAttention per layer (T5: one
    MultiHeadAttention cross-attention per layer too); a tied head is the embedding stored once."""
    import onnx

    family, recipe = case
    spec = FAMILIES[family]
    hf, art = fused_dirs[recipe]
    manifest = fused_manifest(art, spec.model_class)
    assert manifest["kind"] == ("seq2seq-lm" if family == "t5" else "causal-lm")
    assert manifest["model_type"] == AutoConfig.from_pretrained(hf).model_type
    assert ("position_ids" in manifest["graphs"]["decoder"]["inputs"]) == spec.position_ids
    graph = onnx.load(str(art / manifest["graphs"]["decoder"]["file"])).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == 2 and ops.count("MultiHeadAttention") == spec.cross_attention
    assert ops.count("RotaryEmbedding") == (2 * 2 if family == "stablelm-rotary-outside" else 0)  # q and k a layer
    tied = AutoConfig.from_pretrained(hf).tie_word_embeddings  # tiny-llama, tiny-gpt2, tiny-t5-gated-gelu-tied, Gemma
    assert tied == (recipe in ("tiny-llama", "tiny-gpt2", "families/tiny-t5-gated-gelu-tied", "families/tiny-ernie4_5",
                               "families/tiny-lfm2", "families/tiny-lfm2-conv-bias")
                    or recipe.startswith("families/tiny-gemma"))
    assert ("lm_head.weight" in {i.name for i in graph.initializer}) == (not tied)
    # the onnxruntime it needs: 1.24 with a sliding-window layer (runtime/versions.py), else the floor
    cfg = AutoConfig.from_pretrained(hf)
    windowed = bool(getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
                    or "sliding_attention" in (getattr(cfg, "layer_types", None) or []))
    assert manifest["requires"] == {"onnxruntime": "1.24" if windowed else "1.23"}, recipe


@pytest.mark.parametrize("recipe", ["families/tiny-mistral-sliding-window", "families/tiny-gemma3-text"])
def test_onnxruntime_1_23_runs_a_sliding_window_artifact_with_its_windows_narrowed(fused_dirs, recipe, monkeypatch,
                                                                                   capsys):
    """Before 1.24 onnxruntime's window w holds w + 1 positions (runtime/versions.py), so there the runtime hands it
    the graph with each window one position narrower (runtime/window_narrowing.py), which 1.23.2 answers as 1.32
    answers the artifact (scripts/dependency_floor.py, run beside this suite). Here the narrowed graph runs on this
    onnxruntime, which counts windows as transformers does: its logits are transformers' with the window one
    position shorter, the proof that each sliding layer's window and nothing else lost exactly one position (the
    weights read from the artifact's folder). An export's own sessions narrow too (validate._session; the fused
    validation runs through the runtime); ``onnxlm info`` says how 1.23 runs it."""
    import onnxruntime as ort

    from cli_util import run_cli

    from onnxlm.export import validate
    from onnxlm.runtime import DependencyError

    hf, art = fused_dirs[recipe]
    window = AutoConfig.from_pretrained(hf).sliding_window
    impl = attn_implementation_for(AutoConfig.from_pretrained(hf))
    shorter = AutoModelForCausalLM.from_pretrained(hf, sliding_window=window - 1,
                                                   **({"attn_implementation": impl} if impl else {})).eval()
    from onnxlm.runtime import window_narrowing

    as_exported = onnxlm.load(art)
    monkeypatch.setattr(ort, "__version__", "1.23.2")
    monkeypatch.setattr(window_narrowing, "counts_window_wider", lambda: True)  # what the probe says on 1.23
    narrowed = onnxlm.load(art)
    assert narrowed.narrows_windows and not as_exported.narrows_windows
    assert _causal_logits_diff(narrowed, shorter) <= ATOL
    assert _causal_logits_diff(as_exported, shorter) > 100 * ATOL  # these sequences outgrow the window
    narrowed_files = []
    real = window_narrowing.narrowed_model
    monkeypatch.setattr(window_narrowing, "narrowed_model", lambda path, opts: narrowed_files.append(path) or real(path, opts))
    assert validate._session(art / "model.onnx").get_inputs() and narrowed_files == [art / "model.onnx"]
    code, out, _ = run_cli(capsys, "info", art)
    assert code == 0 and "runs on         onnxruntime >= 1.24 (onnxruntime 1.23.2 here counts a window one position " \
        "wider: each is handed to it one narrower)" in out and "not loaded" not in out
    monkeypatch.setattr(ort, "__version__", "1.22.1")
    with pytest.raises(DependencyError, match=r"onnxruntime 1\.22\.1 is installed; onnxlm needs onnxruntime >= "
                                              r"1\.23 "):
        onnxlm.load(art)


#: onnxruntime 1.23.2 installed beside this one by scripts/setup.sh (pip --target): the newest for Python 3.10
ONNXRUNTIME_1_23 = Path(sys.prefix) / "onnxruntime-1.23.2"
ON_1_23 = """
import sys
import numpy as np
import onnxruntime
import onnxlm
if onnxruntime.__version__ != "1.23.2":
    sys.exit(f"onnxruntime {onnxruntime.__version__} imported, not 1.23.2")
if sys.argv[3] == "as-exported":  # the control: the graph handed over unnarrowed, past the version checks
    import onnxlm.runtime.loader, onnxlm.runtime.model
    onnxlm.runtime.model.runs_narrowed = lambda least: False
    onnxlm.runtime.loader.check_artifact_onnxruntime = lambda *args: None
batch = np.load(sys.argv[2])
m = onnxlm.load(sys.argv[1])
greedy = m.generate(batch["ids"], attention_mask=batch["mask"], max_new_tokens=12, do_sample=False, eos_token_id=[],
                    pad_token_id=m.pad_id)
from onnxlm.runtime.window_narrowing import counts_window_wider
np.savez(sys.argv[2] + ".out.npz", logits=m.logits(batch["ids"], batch["mask"]), greedy=greedy.sequences,
         narrowed=m.narrows_windows, wider=counts_window_wider())
"""


def test_onnxruntime_1_23_answers_every_sliding_window_artifact_as_this_one(fused_dirs, tmp_path):
    """Every windowed family's fused artifact loaded on onnxruntime 1.23.2 (a subprocess; windows narrowed by the
    runtime) gives this onnxruntime's logits on a left-padded batch and its greedy ids, 12 new tokens past windows
    of 4; handed over as exported (the control), one answers otherwise: the narrowing is what makes them equal."""
    import subprocess

    if not (ONNXRUNTIME_1_23 / "onnxruntime").is_dir():
        if os.environ.get("CI") == "true":  # CI runs scripts/setup.sh: there its absence is a failure
            pytest.fail(f"{ONNXRUNTIME_1_23} is missing: run scripts/setup.sh")
        pytest.skip(f"{ONNXRUNTIME_1_23} is missing (scripts/setup.sh installs it)")
    windowed = [r for r, (_, art) in fused_dirs.items()
                if json.loads((art / "onnxlm.json").read_text())["requires"]["onnxruntime"] == "1.24"]
    assert len(windowed) >= 5, windowed  # Mistral, Qwen 2 (a per-layer window), Gemma 2, Gemma 3, EXAONE 4, OLMo 3

    def on_1_23(art, name: str, how: str) -> dict:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ONNXRUNTIME_1_23), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", ON_1_23, str(art), str(tmp_path / f"{name}.npz"), how], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return dict(np.load(tmp_path / f"{name}.npz.out.npz"))

    want = {}
    for recipe in windowed:
        art, name = fused_dirs[recipe][1], recipe.split("/")[-1]
        here = onnxlm.load(art)
        ids, mask = _causal_batch(here, seed=5)
        np.savez(tmp_path / f"{name}.npz", ids=ids, mask=mask)
        on = mask.astype(bool)
        want[recipe] = (on, here.logits(ids, mask), here.generate(ids, attention_mask=mask, max_new_tokens=12,
                                                                  do_sample=False, eos_token_id=[],
                                                                  pad_token_id=here.pad_id).sequences)
        got = on_1_23(art, name, "narrowed")
        assert bool(got["wider"]) and bool(got["narrowed"]) and np.abs(got["logits"][on] - want[recipe][1][on]).max() <= ATOL, recipe
        np.testing.assert_array_equal(got["greedy"], want[recipe][2], err_msg=recipe)
    mistral = "families/tiny-mistral-sliding-window"
    control, (on, logits, ids) = on_1_23(fused_dirs[mistral][1], "tiny-mistral-sliding-window", "as-exported"), \
        want[mistral]
    assert not control["narrowed"] and (np.abs(control["logits"][on] - logits[on]).max() > 100 * ATOL
                                        or (control["greedy"] != ids).any())


EXPORT_ON_1_23 = """
import json, sys
import onnxruntime
from onnxlm.export import export_model
assert onnxruntime.__version__ == "1.23.2", onnxruntime.__version__
out = export_model(sys.argv[1], sys.argv[2], progress=False, kv_layout="fused")  # validated: through the runtime
print(json.dumps(json.loads((out / "onnxlm.json").read_text())["validation"]))
"""


def test_a_sliding_window_model_exports_and_validates_on_onnxruntime_1_23(fused_dirs, tmp_path):
    """``onnxlm export`` of a windowed model on onnxruntime 1.23.2 (a subprocess): its validation against PyTorch
    runs through the runtime, which narrows the windows, and passes with the logits as close as on this onnxruntime;
    the artifact records that it needs 1.24 (which 1.23 meets narrowed) and that 1.23.2 exported it."""
    import subprocess

    if not (ONNXRUNTIME_1_23 / "onnxruntime").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{ONNXRUNTIME_1_23} is missing: run scripts/setup.sh")
        pytest.skip(f"{ONNXRUNTIME_1_23} is missing (scripts/setup.sh installs it)")
    for recipe in ("families/tiny-mistral-sliding-window", "families/tiny-gemma3-text"):
        hf, here = fused_dirs[recipe]
        out = tmp_path / recipe.split("/")[-1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ONNXRUNTIME_1_23), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", EXPORT_ON_1_23, str(hf), str(out)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        validation = json.loads(done.stdout.strip().splitlines()[-1])
        manifest = json.loads((out / "onnxlm.json").read_text())
        assert manifest["requires"] == {"onnxruntime": "1.24"} and manifest["versions"]["onnxruntime"] == "1.23.2"
        assert validation["max_abs_diff"] <= max(ATOL, 2 * json.loads((here / "onnxlm.json").read_text())
                                                 ["validation"]["max_abs_diff"]), (recipe, validation)
        assert (out / "model.onnx").read_bytes() == (here / "model.onnx").read_bytes()  # the same graph


def test_logits_left_padded_batch_then_steps_with_past(fused):
    spec, ours, ref = fused
    assert spec.logits_diff(ours, ref) <= ATOL


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_ids_and_scores_equal_transformers(fused, penalty):
    spec, ours, ref = fused
    ids, mask = spec.batch(ours, seed=3)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[], output_scores=True,
                        repetition_penalty=penalty, **spec.pad_kw(ours))
    want = _hf_generate(ref, ids, mask, repetition_penalty=penalty, **spec.pad_kw(ours))
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    assert len(got.scores) == len(want.scores) == NEW
    for g, w in zip(got.scores, want.scores):
        assert np.abs(g - w.numpy()).max() <= ATOL


@pytest.mark.parametrize("seed,beam_kw", [(3, dict(num_beams=3)),  # the old Llama beam3 prompt (seed 3)
                                          (4, dict(num_beams=3, num_return_sequences=2, length_penalty=0.5))],
                         ids=["beam3", "beam3-return2-lp0.5"])
def test_beam_ids_and_scores_equal_transformers(fused, seed, beam_kw):
    spec, ours, ref = fused
    ids, mask = spec.batch(ours, seed=seed)
    kw = {**beam_kw, **spec.pad_kw(ours)}
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[], output_scores=True, **kw)
    want = _hf_generate(ref, ids, mask, **kw)  # beam search reorders the buffers' rows (select)
    assert_beam_equal(got, want, ATOL)


@torch.no_grad()
def test_embeddings_pool_transformers_last_hidden_states(fused):
    """embed (runtime/embedding.py) over the graph's last_hidden_state output: each row's mean / cls / last pooling
    of transformers' hidden_states[-1] on that row alone (<= 1e-4), rows of different lengths batched two at a time
    and returned in order; normalize=True gives those vectors at unit length. T5 (encoder-decoder) refuses."""
    spec, ours, ref = fused
    rng = np.random.default_rng(5)
    rows = [rng.integers(3, ours.vocab_size - 4, size=n).tolist() for n in LENGTHS]
    if ours.is_encoder_decoder:
        with pytest.raises(onnxlm.ModelFileError, match="decoder-only"):
            ours.embed(rows)
        return
    hidden = [ref(torch.tensor([r]), output_hidden_states=True).hidden_states[-1][0].numpy() for r in rows]
    for pooling, take in (("mean", lambda h: h.mean(0)), ("cls", lambda h: h[0]), ("last", lambda h: h[-1])):
        got = ours.embed(rows, pooling=pooling, normalize=False, batch_size=2)
        want = np.stack([take(h) for h in hidden])
        assert got.embeddings.shape == want.shape and got.token_counts == LENGTHS
        assert np.abs(got.embeddings - want).max() <= ATOL, pooling
    unit = ours.embed(rows, pooling="last").embeddings
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, want / np.linalg.norm(want, axis=1, keepdims=True), atol=ATOL)


# ----------------------------------------------------------------------------------------- every family, its base recipe
@pytest.mark.parametrize("case,capacity,new,beams", [(("llama", "families/tiny-mistral-sliding-window"), 8, 20, (1, 3)),
                                                     (("gpt2", "tiny-gpt2"), 8, 20, (1, 3)),
                                                     (("t5", "tiny-t5"), 2, 12, (2,)),
                                                     (("gemma", "families/tiny-gemma3-text"), 8, 20, (1, 3)),
                                                     (("lfm2", "families/tiny-lfm2"), 8, 20, (1, 3))],
                         ids=lambda v: _id(v) if isinstance(v, tuple) and isinstance(v[0], str) else str(v))
def test_steps_append_in_place_and_buffers_grow_by_doubling(fused_dirs, case, capacity, new, beams):
    """Buffers of 2 double until the start fits (``capacity``: 7 prompt tokens -> 8; T5's 1 start token -> 2); the
    step that fills them writes in place, the next doubles them; greedy and beam search across several growths
    (beam steps reorder in place, also after each growth; LFM2's convolution states kept across them) give
    transformers' ids."""
    spec = FAMILIES[case[0]]
    hf, art = fused_dirs[case[1]]
    ours, ref = onnxlm.load(art), spec.reference(hf)
    ours.initial_buffer_length = 2
    ids, mask = spec.batch(ours, seed=4 if case[0] != "t5" else 5)
    state, _ = ours.start(ids, mask)
    assert state.buffers.capacity == capacity
    first = next(iter(state.buffers.arrays))  # layer 0's keys (LFM2: its first attention layer's)
    held = state.buffers.arrays[first]
    state.advance(np.array([5, 6, 7]))  # fills the last position: written in place
    assert state.buffers.arrays[first] is held and np.abs(held[:, :, capacity - 1]).max() > 0
    state.advance(np.array([5, 6, 7]))  # one more: the buffers double
    assert state.buffers.capacity == 2 * capacity
    start = ours.start
    ours.start = lambda ids, mask, max_length=None, **kw: start(ids, mask, **kw)  # no room made up front: generate
    # grows them
    for num_beams in beams:
        kw = {"num_beams": num_beams, **spec.pad_kw(ours)}
        got = ours.generate(ids, attention_mask=mask, max_new_tokens=new, eos_token_id=[], **kw)
        np.testing.assert_array_equal(got.sequences, _hf_generate(ref, ids, mask, new=new, **kw).sequences.numpy())


@pytest.mark.parametrize("case", BASES, ids=_id)
def test_each_step_writes_its_logits_into_a_fresh_array(fused_dirs, case):
    """The graph writes a step's logits straight into a new numpy array of the known width (no copy out of
    onnxruntime's output): the arrays of successive steps never share memory (a kept step's logits stay as they
    were), and they equal what onnxruntime's own output gives (``logits_width = None``, the fallback)."""
    spec = FAMILIES[case[0]]
    ours = onnxlm.load(fused_dirs[case[1]][1])
    assert ours.logits_width == ours.vocab_size
    ids, mask = spec.batch(ours, seed=6)
    runs = []
    for width in (ours.logits_width, None):
        ours.logits_width = width
        state, first = ours.start(ids, mask)
        steps = [first] + [state.advance(np.array([5, 6, 7][:len(first)])) for _ in range(3)]
        runs.append(steps)
    fresh = runs[0]
    assert not any(np.shares_memory(a, b) for i, a in enumerate(fresh) for b in fresh[i + 1:])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", BASES, ids=_id)
def test_score_equals_the_plain_artifact(fused_dirs, case, request):
    spec = FAMILIES[case[0]]
    fused_model, plain = onnxlm.load(fused_dirs[case[1]][1]), onnxlm.load(request.getfixturevalue(spec.fixture).onnx_dir)
    texts = ["hello world", "a", "the quick brown fox"]
    kw = spec.score_args or {"append_eos": True}
    got, want = fused_model.score(texts, **kw), plain.score(texts, **kw)
    assert [list(t) for t in got.tokens] == [list(t) for t in want.tokens]
    for g, w in zip(got.token_logprobs, want.token_logprobs):
        assert np.abs(g - w).max() <= ATOL
    assert np.abs(got.sequence_logprobs - want.sequence_logprobs).max() <= ATOL


@pytest.mark.parametrize("case", CAUSAL_BASES, ids=_id)
def test_beam_select_copies_only_the_held_positions_in_place(fused_dirs, case):
    spec = FAMILIES[case[0]]
    ours = onnxlm.load(fused_dirs[case[1]][1])
    ids, mask = spec.batch(ours, seed=5)
    state, _ = ours.start(ids, mask)
    held = int(state.lengths.max())
    buf = state.buffers.arrays["past_key_values.0.key"]
    buf[:, :, held:] = np.arange(len(buf))[:, None, None, None] + 7.0  # whatever each row holds past its length
    before = buf.copy()
    state.select(np.array([2, 0, 0]))  # same batch size (a beam step): rows copied within the same buffer
    got = state.buffers.arrays["past_key_values.0.key"]
    assert got is buf
    np.testing.assert_array_equal(got[:, :, :held], before[[2, 0, 0], :, :held])
    np.testing.assert_array_equal(got[:, :, held:], before[:, :, held:])  # past held: untouched
    np.testing.assert_array_equal(state.lengths, (mask.sum(axis=1))[[2, 0, 0]])
    state.select(np.array([0, 0, 1, 2]))  # another batch size: fresh buffers, zero past held
    got = state.buffers.arrays["past_key_values.0.key"]
    np.testing.assert_array_equal(got[:, :, :held], before[[2, 0, 0]][[0, 0, 1, 2], :, :held])
    assert got.shape == (4,) + buf.shape[1:] and not got[:, :, held:].any()


def _mapping_of(buffers):
    """The one anonymous mapping every array of a KV buffer set is a view of (runtime/fused/kv_buffers.py)."""
    import mmap
    roots = set()
    for a in buffers.arrays.values():
        while isinstance(a, np.ndarray):
            a = a.base
        a = a.obj if isinstance(a, memoryview) else a  # np.frombuffer keeps a memoryview of the mapping
        assert isinstance(a, mmap.mmap)
        roots.add(a)
    assert len(roots) == 1
    return roots.pop()  # the mmap object itself: the test holds it, so a later mapping cannot reuse its id


@pytest.mark.parametrize("case", CAUSAL_BASES, ids=_id)
def test_buffers_are_views_of_one_anonymous_mapping(fused_dirs, case):
    # fresh, grown, reordered by a beam step and concatenated sets: unused capacity is never resident
    spec = FAMILIES[case[0]]
    ours = onnxlm.load(fused_dirs[case[1]][1])
    ours.initial_buffer_length = 2
    ids, mask = spec.batch(ours, seed=6)
    state, _ = ours.start(ids, mask)
    fresh = _mapping_of(state.buffers)
    state.advance(np.array([5, 6, 7]))
    state.advance(np.array([5, 6, 7]))  # 9 positions: the buffers double into a new mapping
    grown = _mapping_of(state.buffers)
    held = {n: a[:, :, :9].copy() for n, a in state.buffers.arrays.items()}
    state.select(np.array([2, 0, 0]))  # a beam step (same row count): gathered in place, no new pages
    assert _mapping_of(state.buffers) is grown
    for name, a in state.buffers.arrays.items():
        np.testing.assert_array_equal(a[:, :, :9], held[name][[2, 0, 0]])
    state.select(np.array([0, 0, 1, 2]))  # more rows: a fresh mapping, the held positions copied, the rest zero
    assert all(_mapping_of(state.buffers) is not m for m in (fresh, grown))
    for name, a in state.buffers.arrays.items():
        np.testing.assert_array_equal(a[:, :, :9], held[name][[2, 2, 0, 0]])
        assert not a[:, :, 9:].any()
    other, _ = ours.start(ids[:1], mask[:1])
    assert _mapping_of(type(state).concat([state, other]).buffers) is not _mapping_of(state.buffers)


def test_longrope_holds_the_positions_of_its_short_factors(fused_dirs):
    """A longrope model (tiny-phi3-longrope: original context 64 of 128) exports its first 64 positions, where
    transformers rotates with the short factors (past them it switches every position to the long ones at run
    time): the manifest says 64, a longer prompt or generation is refused by name, and the logits at 64 positions
    equal transformers' while a 65-position sequence would change them (the long factors)."""
    from onnxlm.runtime.errors import ParameterError

    hf, art = fused_dirs["families/tiny-phi3-longrope"]
    ours, ref = onnxlm.load(art), _causal_reference(hf)
    assert ours.manifest["max_positions"] == ours.max_positions == 64
    ids = np.random.default_rng(3).integers(3, 250, size=(1, 65))
    with torch.no_grad():
        full = ref(torch.tensor(ids)).logits[0, :64].numpy()         # 65 positions: the long factors everywhere
        short = ref(torch.tensor(ids[:, :64])).logits[0].numpy()
    assert np.abs(ours.logits(ids[:, :64])[0] - short).max() <= ATOL < np.abs(full - short).max()
    with pytest.raises(InputError, match="at most 64"):
        ours.logits(ids)
    with pytest.raises(ParameterError, match="max_positions 64"):
        ours.generate(ids[:, :60], max_new_tokens=8)


# --------------------------------------------------------------------------------------- what the builders refuse
def test_fused_refuses_other_model_types_and_bad_layouts(tiny_llama, tmp_path):
    from transformers import OlmoConfig

    torch.manual_seed(0)
    olmo = AutoModelForCausalLM.from_config(OlmoConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                       num_hidden_layers=1, num_attention_heads=2,
                                                       num_key_value_heads=1)).eval()
    with pytest.raises(ExportError, match="'olmo' is not supported; supported: ernie4_5, exaone4, gemma, gemma2, "
                                          "gemma3_text, gpt2, granite, lfm2, llama, mistral, mt5, olmo2, olmo3, phi3, qwen2, "
                                          "qwen3, "
                                          "smollm3, stablelm, t5"):
        export_model(olmo, tmp_path / "a", progress=False, kv_layout="fused", validate=False)
    from types import SimpleNamespace

    from transformers import StableLmConfig

    from onnxlm.export import fused_llama

    small = dict(vocab_size=64, hidden_size=64, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4)
    for setting, why in (({"qk_layernorm": True}, "qk_layernorm \\(StableLM's per-head q/k LayerNorms\\)"),
                         ({"partial_rotary_factor": 0.3125}, "a rotary of 5 of 16 head dims is not supported")):
        with pytest.raises(ExportError, match=f"kv_layout='fused': {why}"):  # StableLM 2 12B; an odd rotary
            fused_llama.check_supported(SimpleNamespace(config=StableLmConfig(**small, **setting)))
    for factor in (1.0, 0.25):  # every dim; StableLM 3B's kind (4 of 16: turned before GroupQueryAttention)
        fused_llama.check_supported(SimpleNamespace(config=StableLmConfig(**small, partial_rotary_factor=factor)))
    with pytest.raises(ExportError, match="kv_layout.*'plain', 'fused'"):
        export_model(tiny_llama.hf_dir, tmp_path / "b", progress=False, kv_layout="paged")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("model_type,setting", [("llama", {"hidden_size": 96}),  # head 24: full rotary
                                               ("stablelm", {"hidden_size": 160, "partial_rotary_factor": 0.4})],
                         ids=["llama-head-24", "stablelm-head-40-rotating-16"])
def test_a_head_gqa_cannot_rotate_is_turned_before_it(model_type, setting, tmp_path):
    """GroupQueryAttention rotates only heads of a multiple of 16: a Llama head of 24 (full rotary), or a StableLM head
    of 40 rotating 16 dims, gets its rotary from RotaryEmbedding nodes before it; the export's validation (a left-padded
    batch, steps with past, against transformers) passes, and a Gemma head of 24 is refused by the fused builder."""
    import onnx
    from transformers import AutoConfig as Config

    from onnxlm.export.fused import fused_supported

    torch.manual_seed(0)
    config = Config.for_model(model_type, vocab_size=64, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **setting)
    model = AutoModelForCausalLM.from_config(config).eval()
    out = export_model(model, tmp_path / "a", progress=False, kv_layout="fused")
    assert all(c["passed"] for c in json.loads((out / "onnxlm.json").read_text())["validation"]["checks"])
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("RotaryEmbedding") == 2
    gemma = AutoModelForCausalLM.from_config(Config.for_model("gemma", vocab_size=64, hidden_size=96,
                                                              intermediate_size=32, num_hidden_layers=1,
                                                              num_attention_heads=4, num_key_value_heads=2,
                                                              head_dim=24))
    assert not fused_supported(gemma)


@pytest.mark.parametrize("model_type,setting", [
    ("gemma", {"attention_bias": True}), ("gemma2", {"attention_bias": True}),
    ("gemma3_text", {"attention_bias": True}),
    ("gemma3_text", {"attn_logit_softcapping": 5.0}),  # set, and never applied by transformers' Gemma 3 attention
    ("gemma3_text", {"layer_types": ["sliding_attention"] * 2}), ("gemma3_text", {"layer_types": ["full_attention"] * 2}),
], ids=["gemma-bias", "gemma2-bias", "gemma3-bias", "gemma3-softcap-unused", "gemma3-all-local", "gemma3-all-global"])
def test_gemma_settings_the_fused_graph_keeps(model_type, setting, tmp_path):
    """Gemma configs the fused builder took and got wrong (a review's findings): q/k/v biases were dropped (the
    validation failed by ~0.1), Gemma 3 was soft-capped where transformers never caps it; a Gemma 3 whose layers are
    all of one kind carried the other kind's rotary tables unused (onnxruntime warns at every load). Each now
    validates against transformers and every initializer is read."""
    import onnx
    from transformers import AutoConfig as Config

    torch.manual_seed(0)
    windowed = {"sliding_window": 4} if model_type != "gemma" else {}  # (Gemma 1 has none)
    config = Config.for_model(model_type, vocab_size=64, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                              **windowed, **setting)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # transformers initialises biases to 0: make them count
        for name, param in model.named_parameters():
            if name.endswith("_proj.bias"):
                param.normal_(0.0, 0.5)
    out = export_model(model, tmp_path / "a", progress=False, kv_layout="fused")
    manifest = json.loads((out / "onnxlm.json").read_text())
    assert manifest["kv_layout"] == "fused-gqa" and all(c["passed"] for c in manifest["validation"]["checks"])
    graph = onnx.load(str(out / "model.onnx")).graph
    read = {name for node in graph.node for name in node.input}
    assert [t.name for t in graph.initializer if t.name not in read] == []


@pytest.mark.parametrize("model_type", ["llama", "gemma"])
@pytest.mark.parametrize("kv_layout", ["fused", "plain"])
def test_a_window_its_attention_ignores_is_refused_by_name(model_type, kv_layout, tmp_path):
    """``sliding_window`` in a Llama or Gemma 1 config (copied from another model's): transformers' attention ignores
    it while its KV cache keeps only that window, so transformers answers a prompt and its cached steps differently;
    no graph can match both: refused by name, nothing written."""
    from transformers import AutoConfig as Config

    torch.manual_seed(0)
    config = Config.for_model(model_type, vocab_size=64, hidden_size=64, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                              sliding_window=4)
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ExportError, match=f"sliding_window 4 in a '{model_type}' config: .* set it to null"):
        export_model(model, tmp_path / "a", progress=False, kv_layout=kv_layout)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("setting", [{"reorder_and_upcast_attn": True}, {"scale_attn_weights": False},
                                     {"activation_function": "silu"}])
def test_gpt2_variants_the_graph_cannot_express_fall_back_to_plain(setting, tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=64,
                                       **setting)).eval()
    assert not fused_supported(model)
    name = next(iter(setting))
    with pytest.raises(ExportError, match=name):
        export_model(model, tmp_path / "fused", progress=False, kv_layout="fused", validate=False)
    assert fused_supported(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32,
                                                      vocab_size=64)))


@pytest.mark.parametrize("setting,message", [({"d_kv": 4}, "head_dim 4 is not a multiple of 8"),
                                             ({"feed_forward_proj": "gated-silu"}, "activation 'silu'")])
def test_t5_configs_the_graphs_cannot_express_fall_back_to_plain(setting, message, tmp_path):
    from transformers import T5Config

    torch.manual_seed(0)
    config = T5Config(**{"vocab_size": 64, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2,
                         "decoder_start_token_id": 0, **setting})
    model = T5ForConditionalGeneration(config).eval()
    assert not fused_supported(model)
    with pytest.raises(ExportError, match=message):
        export_model(model, tmp_path / "fused", progress=False, kv_layout="fused", validate=False)


def test_unknown_kv_layout_is_refused(fused_dirs, tmp_path):
    import shutil

    from onnxlm.runtime.errors import ManifestError

    art = shutil.copytree(fused_dirs["tiny-llama"][1], tmp_path / "art")
    manifest = json.loads((art / "onnxlm.json").read_text())
    (art / "onnxlm.json").write_text(json.dumps({**manifest, "kv_layout": "paged"}))
    with pytest.raises(ManifestError, match="kv_layout 'paged'.*'plain', 'fused-gqa'"):
        onnxlm.load(art)


def test_a_failed_validation_leaves_nothing(tiny_gpt2, tmp_path, monkeypatch):
    real = FusedCausalLM._run
    monkeypatch.setattr(FusedCausalLM, "_run", lambda self, *a: real(self, *a) + 0.01)  # a graph off by 0.01
    with pytest.raises(ExportError, match="validation failed"):
        export_model(tiny_gpt2.hf_dir, tmp_path / "out", progress=False, kv_layout="fused")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- one family only
def test_gpt2_inverse_layer_scale_is_validated_eager_and_the_callers_setting_restored(tmp_path):
    """The fused graph follows transformers' eager attention (its SDPA path drops the 1/(layer_idx+1) scale): the
    export validates against eager and hands a passed model back with its own attention implementation."""
    from onnxlm.export.recipes import instantiate_recipe

    model, tok, *_ = instantiate_recipe(RECIPES / "families" / "tiny-gpt2-untied-inverse-layer-scale")
    assert model.config._attn_implementation == "sdpa"
    art = export_model(model, tmp_path / "out", progress=False, tokenizer=tok, kv_layout="fused")
    assert model.config._attn_implementation == "sdpa"
    assert json.loads((art / "onnxlm.json").read_text())["validation"]["max_abs_diff"] <= ATOL


def test_cli_exports_fused_and_info_shows_the_layout(capsys, tiny_llama, tmp_path):
    from onnxlm.cli import main

    assert main(["export", str(tiny_llama.hf_dir), str(tmp_path / "art"), "--kv-layout", "fused", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "art"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_layout"] == "fused-gqa"
    assert main(["info", str(tiny_llama.onnx_dir)]) == 0
    assert "kv layout plain" in capsys.readouterr().out


def test_large_weights_go_to_a_mapped_data_file(tiny_llama, fused_dirs, tmp_path, monkeypatch):
    """Weights over MAX_INLINE_BYTES (64 MiB: SmolLM2's and Gemma's fp32 graphs) go from their arrays to
    model.onnx_data at page-aligned offsets, small tensors inline, a head over HEAD_PART_BYTES (48 MiB) by rows, the
    tied lookup over an alias of the head's weight; the artifact computes what the inline one does, bit for bit."""
    import onnx

    from onnxlm.export import fused_graph, head_parts, mapped_weights

    monkeypatch.setattr(fused_graph, "MAX_INLINE_BYTES", 0)
    monkeypatch.setattr(head_parts, "HEAD_PART_BYTES", 16 << 10)  # the 260 x 64 head in parts of 64 rows
    art = export_model(tiny_llama.hf_dir, tmp_path / "art", progress=False, kv_layout="fused")
    manifest = json.loads((art / "onnxlm.json").read_text())
    assert "model.onnx_data" in manifest["files"] and (art / "model.onnx").stat().st_size < 50_000
    proto = onnx.load(str(art / "model.onnx"), load_external_data=False)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer
                if t.data_location == t.EXTERNAL}
    assert "embed_tokens.weight.part0" in external and all(int(e["offset"]) % mapped_weights.ALIGN == 0
                                                     for e in external.values())
    assert all(t.ByteSize() < 2 * mapped_weights.INLINE_BYTES for t in proto.graph.initializer if t.name not in external)
    # the head by rows (one Gemm a part, packed one at a time), the parts back to back; the tied lookup reads an
    # alias spanning them: the same bytes, mapped on their own
    parts = [f"embed_tokens.weight.part{i}" for i in range(5)]
    assert [n.input[1] for n in proto.graph.node if n.op_type == "Gemm"] == parts
    assert all(p in external for p in parts) and [list(t.dims) for t in proto.graph.initializer if t.name in parts] \
        == [[64, 64]] * 4 + [[4, 64]]
    assert mapped_weights.alias_map(art / "model.onnx") == {"embed_tokens.weight.lookup": parts}
    assert [n.input[0] for n in proto.graph.node if n.op_type == "Gather" and "embed" in n.input[0]] == \
        ["embed_tokens.weight.lookup"]
    inline = onnxlm.load(fused_dirs["tiny-llama"][1])
    assert not (fused_dirs["tiny-llama"][1] / "model.onnx_data").exists()
    ids, mask = _causal_batch(inline, seed=5)
    np.testing.assert_array_equal(onnxlm.load(art).logits(ids, mask), inline.logits(ids, mask))
    # merged back for the quantizers: from the data file (one range of it, nothing read) and from loaded parts
    # (their bytes joined), both the inline artifact's one weight and one Gemm
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_model

    whole = numpy_helper.to_array(next(t for t in onnx.load(str(fused_dirs["tiny-llama"][1] / "model.onnx")).graph
                                       .initializer if t.name == "embed_tokens.weight"))
    for read_first in (False, True):
        m = onnx.load(str(art / "model.onnx"), load_external_data=False)
        if read_first:
            load_external_data_for_model(m, str(art))
        assert head_parts.merge(m) == {"embed_tokens.weight": parts}
        t = next(t for t in m.graph.initializer if t.name == "embed_tokens.weight")
        assert (t.data_location == t.EXTERNAL) != read_first and not {i.name for i in m.graph.initializer} & set(parts)
        load_external_data_for_model(m, str(art))
        np.testing.assert_array_equal(numpy_helper.to_array(t), whole)
        assert [n.input[1] for n in m.graph.node if n.op_type == "Gemm"] == ["embed_tokens.weight"]


@pytest.mark.parametrize("case", CAUSAL_BASES, ids=_id)
def test_logits_at_chosen_positions_equal_the_whole_pass(fused_dirs, case, request):
    """logits(..., positions=) on a left-padded batch: those columns of the whole pass (the fused graph sends only
    them through its head; the plain one slices); bad positions are typed errors naming the parameter."""
    spec = FAMILIES[case[0]]
    for model in (onnxlm.load(fused_dirs[case[1]][1]), onnxlm.load(request.getfixturevalue(spec.fixture).onnx_dir)):
        ids, mask = _causal_batch(model, seed=7)
        whole = model.logits(ids, mask)
        keep = [5, 0, ids.shape[1] - 1, 2]
        got = model.logits(ids, mask, positions=np.array(keep))
        assert got.shape == (len(ids), 4, model.vocab_size)
        np.testing.assert_allclose(got, whole[:, keep], rtol=0, atol=1e-5)
        for bad in ([], [ids.shape[1]], [-1], [[1]], [0.5], 3):
            with pytest.raises(InputError, match=r"^positions: "):
                model.logits(ids, mask, positions=bad)


# ------------------------------------------------------------------------- extend / rollback (speculation, prefix reuse)
def _extend_rollback_matches_one_pass(ours, spec, seed):
    """start on a left-padded batch, extend 4 tokens per row, roll back 3 / 0 / 2 of them, extend 3 more: every
    logits row equals one forward pass (``logits``) over that row's kept tokens; left padding kept as in start."""
    rng = np.random.default_rng(seed)
    ids, mask = spec.batch(ours, seed=seed)
    rows = [list(r[m == 1]) for r, m in zip(ids, mask)]
    state, _ = ours.start(ids, mask)
    first = rng.integers(4, ours.vocab_size - 4, (len(rows), 4))
    got = state.extend(first)                                                   # [b, 4, V]
    for r, row in enumerate(rows):
        want = ours.logits([row + list(first[r])])[0, -4:]
        assert np.abs(got[r] - want).max() <= ATOL
    counts = np.array([3, 0, 2])
    state.rollback(counts)
    kept = [row + list(first[r][:4 - c]) for r, (row, c) in enumerate(zip(rows, counts))]
    second = rng.integers(4, ours.vocab_size - 4, (len(rows), 3))
    got = state.extend(second)
    for r, row in enumerate(kept):
        want = ours.logits([row + list(second[r])])[0, -3:]
        assert np.abs(got[r] - want).max() <= ATOL
    last = state.advance(second[:, -1])                                         # one more plain step after it all
    for r, row in enumerate(kept):
        want = ours.logits([row + list(second[r]) + [int(second[r, -1])]])[0, -1]
        assert np.abs(last[r] - want).max() <= ATOL
    with pytest.raises(onnxlm.InputError, match="counts"):
        state.rollback(np.array([0, 99, 0]))


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "t5"], ids=_id)
def test_fused_extend_and_rollback_equal_one_pass(fused_dirs, case):
    """The fused state's multi-token step and rollback (lower a row's length): every family, sliding windows too."""
    spec = FAMILIES[case[0]]
    _extend_rollback_matches_one_pass(onnxlm.load(fused_dirs[case[1]][1]), spec, seed=7)


@pytest.mark.parametrize("case", CAUSAL_BASES, ids=_id)
def test_plain_extend_and_rollback_equal_one_pass(case, request):
    """The plain state: extend appends k attended columns, rollback masks each row's last positions (holes)."""
    spec = FAMILIES[case[0]]
    _extend_rollback_matches_one_pass(onnxlm.load(request.getfixturevalue(spec.fixture).onnx_dir), spec, seed=8)


@pytest.mark.parametrize("case", CAUSAL_BASES, ids=_id)
def test_an_export_from_a_path_releases_the_pytorch_weights_while_building(tmp_path, fused_dirs, case):
    """``export_model`` on a path owns the model it loads: it takes PyTorch's reference logits first, then drops each
    layer's weights once the layer's arrays are made (``release``), and validates the runtime against those
    references (every artifact of ``fused_dirs`` was exported so and passed), the rest of the model once the graph is
    written. The graph is byte for byte the one a kept model gives; a model passed in is never released."""
    from onnxlm.export.fused import build_fused_graphs

    hf = fused_dirs[case[1]][0]
    kept, released = (AutoModelForCausalLM.from_pretrained(hf).eval() for _ in range(2))
    for d in ("kept", "released"):
        (tmp_path / d).mkdir()
    build_fused_graphs(kept, tmp_path / "kept")
    build_fused_graphs(released, tmp_path / "released", release=True)
    files = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "released").iterdir())
    for name in files:
        assert (tmp_path / "kept" / name).read_bytes() == (tmp_path / "released" / name).read_bytes(), name
    assert all(p.numel() == 0 for p in released.parameters())
    export_model(kept, tmp_path / "art", progress=False)  # a passed model: built, validated, and still whole
    assert all(p.numel() > 0 for p in kept.parameters())
    assert all(c["passed"] for c in json.loads((tmp_path / "art" / "onnxlm.json").read_text())["validation"]["checks"])
