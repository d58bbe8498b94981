"""Export: artifact layout, manifest, validation, atomic writes, refusals."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="export tests need the 'export' extra")
pytest.importorskip("optimum.exporters.onnx", reason="export tests need the 'export' extra")

from onnxlm.export import ExportError, export_model  # noqa: E402
from onnxlm.runtime.errors import ExportError as RuntimeExportError  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "models" / "recipes"
ALL = ["tiny_gpt2", "tiny_t5", "tiny_llama"]


def _manifest(d: Path) -> dict:
    return json.loads((d / "onnxlm.json").read_text())


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_export_error_is_the_runtime_one():
    assert ExportError is RuntimeExportError


@pytest.mark.parametrize("fx", ALL)
def test_files_and_checksums(fx, request):
    art = request.getfixturevalue(fx).onnx_dir
    man = _manifest(art)
    on_disk = {p.relative_to(art).as_posix() for p in art.rglob("*") if p.is_file()} - {"onnxlm.json"}
    assert set(man["files"]) == on_disk
    for name, entry in man["files"].items():
        data = (art / name).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert name in on_disk
    assert not any(n.startswith(".") for n in _listing(art.parent)), "temp dirs left beside the artifact"


@pytest.mark.parametrize(
    "fx, kind, model_type, dims",
    [
        ("tiny_gpt2", "causal-lm", "gpt2", dict(num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, hidden_size=64,
                                                vocab_size=260, max_positions=128)),
        ("tiny_t5", "seq2seq-lm", "t5", dict(num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, hidden_size=64,
                                             vocab_size=260, max_positions=None)),
        ("tiny_llama", "causal-lm", "llama", dict(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                                  hidden_size=64, vocab_size=260, max_positions=256)),
    ],
)
def test_manifest_fields(fx, kind, model_type, dims, request):
    man = _manifest(request.getfixturevalue(fx).onnx_dir)
    assert man["format_version"] == 1
    assert man["kind"] == kind and man["model_type"] == model_type
    for k, v in dims.items():
        assert man[k] == v, k
    assert man["dtype"] == "float32"
    assert isinstance(man["opset"], int) and man["opset"] >= 14
    for dist in ("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime"):
        assert man["versions"][dist]
    st = man["special_tokens"]
    assert st["eos_token_id"] == 258 and st["pad_token_id"] == 256
    if kind == "seq2seq-lm":
        assert st["decoder_start_token_id"] == 256 and st["bos_token_id"] is None
    else:
        assert st["bos_token_id"] == 257
    gen = json.loads((request.getfixturevalue(fx).onnx_dir / "generation_config.json").read_text())
    for k, v in st.items():
        if v is not None and k.endswith("_id"):
            assert gen[k] == v
    hf = request.getfixturevalue(fx).hf_dir  # the source: its directory's name and every file's sha256, no path
    assert man["source"] == {"name": hf.name, "files": {p.relative_to(hf).as_posix(): _file_entry(p)
                                                        for p in sorted(hf.rglob("*")) if p.is_file()}}


def _file_entry(path: Path) -> dict:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


def _strings(value):
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def assert_no_machine_paths(manifest: dict, *dirs: Path) -> None:
    """No absolute path in a manifest: nothing that starts with '/' or names the build's directories or home."""
    places = [str(d) for d in dirs] + [str(Path.home())]
    for text in _strings(manifest):
        assert not text.startswith("/") and not any(p in text for p in places), text


@pytest.mark.parametrize("fx", ALL)
def test_manifest_records_no_machine_path(fx, request):
    model = request.getfixturevalue(fx)
    assert_no_machine_paths(_manifest(model.onnx_dir), model.onnx_dir.parent, model.hf_dir.parent,
                            model.recipe_dir.parent)


def test_special_id_outside_the_vocabulary_is_named(tmp_path):
    """GPT2Config(vocab_size=300) keeps bos/eos 50256: one ExportError naming the field, the id and the vocabulary
    size, before anything is exported (was an IndexError inside validation)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_layer=1, n_head=2, n_embd=16, n_positions=32)).save_pretrained(
        tmp_path / "hf")
    with pytest.raises(ExportError, match=r"bos_token_id=50256 \(from the generation_config\) is outside the "
                                          r"vocabulary \(vocab_size=300\).*< 300"):
        export_model(tmp_path / "hf", tmp_path / "out", progress=False)
    assert _listing(tmp_path) == ["hf"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())  # a list, read from the model config
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "bos_token_id": 1, "eos_token_id": [2, 300]}))
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps({"bos_token_id": 1}))
    with pytest.raises(ExportError, match=r"eos_token_id=300 \(from the config\)"):
        export_model(tmp_path / "hf", tmp_path / "out", progress=False)


@pytest.mark.parametrize("fx", ALL)
def test_validation_recorded(fx, request):
    val = _manifest(request.getfixturevalue(fx).onnx_dir)["validation"]
    names = [c["name"] for c in val["checks"]]
    if fx == "tiny_t5":
        assert names == ["encoder_padded_batch", "decoder_first_step", "decoder_step_with_past"]
    else:
        assert names == ["first_step", "step_with_past", "left_padded_batch", "left_padded_step_with_past"]
    assert all(c["passed"] for c in val["checks"])
    assert val["max_abs_diff"] == max(c["max_abs_diff"] for c in val["checks"])
    assert val["max_abs_diff"] < 1e-4  # tiny fp32 models agree far better than the tolerance
    max_ref = max(c["max_abs_ref"] for c in val["checks"] if "top1_mismatches" in c)
    assert val["tolerance"] == pytest.approx(1e-4 + 1e-4 * max_ref)


@pytest.mark.parametrize("fx", ["tiny_gpt2", "tiny_llama"])
def test_decoder_graph_io(fx, request):
    man = _manifest(request.getfixturevalue(fx).onnx_dir)
    assert set(man["graphs"]) == {"decoder"}
    g = man["graphs"]["decoder"]
    assert g["file"] == "model.onnx"
    L = man["num_layers"]
    past = [f"past_key_values.{i}.{k}" for i in range(L) for k in ("key", "value")]
    assert sorted(g["inputs"]) == sorted(["input_ids", "attention_mask", "position_ids", "logits_to_keep", *past])
    assert sorted(g["outputs"]) == sorted(["logits", *[f"present.{i}.{k}" for i in range(L) for k in ("key", "value")]])


def test_graph_io_lists_what_onnxruntime_lists(tiny_gpt2, tiny_t5, tiny_llama, tmp_path):
    """manifest.graph_io reads the names from the graph alone, in onnxruntime's order (plain, merged T5, a fused
    graph; a graph that lists an initializer among its inputs leaves it out, as get_inputs does)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from onnxlm.export import export_model
    from onnxlm.export.manifest import graph_io

    fused = export_model(tiny_llama.hf_dir, tmp_path / "fused", progress=False, kv_layout="fused")
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    listed = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 2]) for n in ("x", "w")],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])], [w]))
    onnx.save(listed, str(tmp_path / "listed.onnx"))
    files = [tiny_gpt2.onnx_dir / "model.onnx", *sorted(tiny_t5.onnx_dir.glob("*.onnx")), fused / "model.onnx",
             tmp_path / "listed.onnx"]
    for f in files:
        s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        assert graph_io(f) == {"inputs": [i.name for i in s.get_inputs()],
                               "outputs": [o.name for o in s.get_outputs()]}, f
    assert graph_io(tmp_path / "listed.onnx")["inputs"] == ["x"]


def test_gpt2_has_position_ids(tiny_gpt2):
    import onnxruntime as ort

    s = ort.InferenceSession(str(tiny_gpt2.onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert "position_ids" in [i.name for i in s.get_inputs()]


def test_t5_ships_encoder_and_merged_decoder(tiny_t5):
    art = tiny_t5.onnx_dir
    assert [n for n in _listing(art) if n.endswith(".onnx")] == ["decoder_model_merged.onnx", "encoder_model.onnx"]
    man = _manifest(art)
    assert man["graphs"]["encoder"] == {"file": "encoder_model.onnx", "inputs": ["input_ids", "attention_mask"],
                                        "outputs": ["last_hidden_state"]}
    dec = man["graphs"]["decoder"]
    assert dec["file"] == "decoder_model_merged.onnx"
    assert {"encoder_attention_mask", "input_ids", "encoder_hidden_states", "use_cache_branch",
            "past_key_values.0.decoder.key", "past_key_values.1.encoder.value"} <= set(dec["inputs"])
    assert {"logits", "present.0.decoder.key", "present.1.encoder.value"} <= set(dec["outputs"])


def test_tied_embedding_stored_once(tiny_gpt2):
    import onnx
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    unique = sum(p.numel() for p in model.parameters()) * 4  # parameters() yields a tied tensor once
    emb = model.transformer.wte.weight.numel() * 4
    g = onnx.load(str(tiny_gpt2.onnx_dir / "model.onnx")).graph
    tensors = list(g.initializer) + [a.t for n in g.node if n.op_type == "Constant" for a in n.attribute if a.t.dims]
    weight_bytes = sum(int(np.prod(t.dims)) * 4 for t in tensors if t.data_type == onnx.TensorProto.FLOAT)
    assert weight_bytes < unique + emb / 2, (weight_bytes, unique, emb)
    emb_shaped = [t.name for t in tensors if sorted(t.dims) == sorted(model.transformer.wte.weight.shape)]
    assert len(emb_shaped) == 1, emb_shaped
    # the file is the weights plus graph structure (~85 KB for this model), not two copies of the embedding
    size = (tiny_gpt2.onnx_dir / "model.onnx").stat().st_size
    assert size < weight_bytes + emb + 150_000


def test_recipe_tokenizers_round_trip(tiny_gpt2, tiny_t5, tiny_llama):
    from tokenizers import Tokenizer

    text = "Grüße, 世界! 🎉 ok"
    gpt2 = Tokenizer.from_file(str(tiny_gpt2.onnx_dir / "tokenizer.json"))
    ids = gpt2.encode(text).ids
    assert ids == list(text.encode("utf-8")) and gpt2.decode(ids) == text
    t5 = Tokenizer.from_file(str(tiny_t5.onnx_dir / "tokenizer.json"))
    ids = t5.encode(text).ids
    assert ids[-1] == 258 and ids[:-1] == list(text.encode("utf-8"))  # </s> appended
    assert t5.decode(ids) == text  # special tokens skipped
    llama = Tokenizer.from_file(str(tiny_llama.onnx_dir / "tokenizer.json"))
    assert llama.encode(text).ids[0] == 257  # <s> prepended
    assert (tiny_llama.onnx_dir / "chat_template.jinja").read_text()


def test_hf_dir_loads_in_transformers(tiny_gpt2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2.hf_dir)
    assert tok("hé")["input_ids"] == [104, 195, 169]
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir)
    assert model.config.vocab_size == 260


def test_recipe_weights_are_deterministic():
    from onnxlm.export.recipes import instantiate_recipe

    a = instantiate_recipe(RECIPES / "tiny-llama")[0].state_dict()
    b = instantiate_recipe(RECIPES / "tiny-llama")[0].state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_forced_validation_failure_leaves_nothing(tmp_path, monkeypatch):
    import onnxlm.export.validate as validate

    real = validate._ort_run

    def perturbed(session, feeds):
        out = real(session, feeds)
        if "logits" in out:
            out["logits"] = out["logits"] + 0.01
        return out

    monkeypatch.setattr(validate, "_ort_run", perturbed)
    with pytest.raises(ExportError, match="validation failed"):  # the plain exporter's validation
        export_model(RECIPES / "tiny-gpt2", tmp_path / "out", progress=False, kv_layout="plain")
    assert _listing(tmp_path) == []


def test_explicit_tolerance_is_absolute(tmp_path):
    with pytest.raises(ExportError, match=r"max\|diff\|"):
        export_model(RECIPES / "tiny-t5", tmp_path / "out", tolerance=1e-12, progress=False)
    assert _listing(tmp_path) == []


def test_interrupt_leaves_nothing(tmp_path, monkeypatch):
    import onnxlm.export.export as ex

    def interrupted(model, family, out_dir, **kw):
        (Path(out_dir) / "model.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(RECIPES / "tiny-gpt2", tmp_path / "out", progress=False, kv_layout="plain")
    assert _listing(tmp_path) == []


def test_existing_dir_refused_then_replaced_with_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "junk.txt").write_text("keep me")
    with pytest.raises(ExportError, match="force"):
        export_model(RECIPES / "tiny-gpt2", out, progress=False)
    assert _listing(out) == ["junk.txt"]
    assert export_model(RECIPES / "tiny-gpt2", out, force=True, kv_layout="plain") == out
    assert "junk.txt" not in _listing(out) and "model.onnx" in _listing(out)
    assert _listing(tmp_path) == ["out"]
    assert "validate left_padded_batch" in capsys.readouterr().err  # progress + measured diffs on stderr
    assert _manifest(out)["source"] == {"name": "tiny-gpt2",
                                        "files": {"recipe.json": _file_entry(RECIPES / "tiny-gpt2" / "recipe.json")}}


def test_empty_existing_dir_is_used(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    export_model(RECIPES / "tiny-llama", out, validate=False, progress=False)
    assert _manifest(out)["validation"] is None
    assert _listing(tmp_path) == ["out"]


def test_in_memory_model_with_tokenizer(tmp_path, tiny_gpt2):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir)
    out = export_model(model, tmp_path / "mem", progress=False, tokenizer=tiny_gpt2.hf_dir / "tokenizer.json")
    assert _manifest(out)["validation"]["max_abs_diff"] < 1e-4


def test_unsupported_architecture(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64)
    with pytest.raises(ExportError) as e:
        export_model(BertForMaskedLM(cfg), tmp_path / "bert", progress=False)
    msg = str(e.value)
    assert "'bert'" in msg and "GPT-2" in msg and "T5" in msg and "Llama" in msg
    cfg.save_pretrained(tmp_path / "bert-src")  # config only: refused before any weights are read
    with pytest.raises(ExportError, match="supported families"):
        export_model(tmp_path / "bert-src", tmp_path / "bert", progress=False)
    assert _listing(tmp_path) == ["bert-src"]


def test_a_checkpoint_without_some_weights_is_refused_by_name(tmp_path, tiny_llama):
    """transformers starts the weights a checkpoint lacks at random and only logs it: the export would validate (the
    graph equals that PyTorch model) and answer nonsense. A transformers dir missing one tensor is refused, naming it,
    and nothing is written."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(tiny_llama.hf_dir, src)
    weights = load_file(src / "model.safetensors")
    gone = "model.layers.1.mlp.down_proj.weight"
    del weights[gone]
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match=rf"src: the checkpoint has no values for 1 of the model's weights "
                                          rf"\({gone}\); transformers would start them at random"):
        export_model(src, tmp_path / "out", progress=False)
    assert _listing(tmp_path) == ["src"]


@pytest.mark.parametrize("opset", [13, 0, 99, True, "17"])
def test_an_opset_the_exporter_cannot_write_is_refused_before_loading(tmp_path, no_weight_loads, opset):
    """Below 14 torch cannot write the attention (it said so only after the model loaded, deep in its exporter);
    above its newest it writes none; not a number: not an opset."""
    from torch.onnx._constants import ONNX_MAX_OPSET

    with pytest.raises(ExportError, match=rf"opset: got {opset!r}; allowed: 14 to {ONNX_MAX_OPSET} \(the attention "
                                          rf"needs 14; torch's exporter writes none above {ONNX_MAX_OPSET}\)"):
        export_model(RECIPES / "tiny-gpt2", tmp_path / "out", progress=False, opset=opset)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw,match", [
    (dict(quantize="gguf", opset=13), "opset: quantize='gguf' rewrites the fused graph"),
    (dict(kv_layout="fused", opset=13), r"opset: the fused graph \(kv_layout='fused'\) is built at a fixed opset"),
])
def test_an_opset_where_none_is_taken_is_refused_as_such_whatever_its_value(tmp_path, kw, match):
    with pytest.raises(ExportError, match=match):
        export_model(RECIPES / "tiny-gpt2", tmp_path / "out", progress=False, **kw)


def test_a_recipe_is_taken_as_a_recipe_by_the_early_layout_check(tmp_path, no_weight_loads):
    """A recipe directory that also holds a config.json of another model_type: the loader takes the recipe, and so
    does the check that refuses a fused-only family's plain layout before loading (it had read the config.json)."""
    import shutil

    recipe = shutil.copytree(RECIPES / "tiny-llama", tmp_path / "recipe")
    (recipe / "config.json").write_text(json.dumps({"model_type": "exaone4"}))
    # past the check to the recipe's weights: tiny-llama (llama) has a plain graph
    with pytest.raises(pytest.fail.Exception, match="the weights were loaded"):
        export_model(recipe, tmp_path / "out", progress=False, kv_layout="plain")


def test_missing_source(tmp_path):
    with pytest.raises(ExportError):
        export_model(tmp_path / "no" / "such" / "model", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_manifest_carries_special_token_strings(tiny_llama):
    import json
    manifest = json.loads((tiny_llama.onnx_dir / "onnxlm.json").read_text())
    specials = manifest["special_tokens"]
    assert (specials["bos_token"], specials["eos_token"], specials["pad_token"]) == ("<s>", "</s>", "<pad>")
    gen = json.loads((tiny_llama.onnx_dir / "generation_config.json").read_text())
    assert "bos_token" not in gen and gen["eos_token_id"] == specials["eos_token_id"]


def test_near_tie_rule_top1_flip_within_tolerance_passes_beyond_fails():
    """The validation's top-1 rule on crafted logits: a flip between two tokens whose reference logits are within
    the tolerance (a near-tie) passes and is counted; a flip where the reference gap exceeds the tolerance fails
    even though every logit is within the tolerance; a flip from a large error fails on both counts."""
    from onnxlm.export.validate import _Check, judge_check

    tol = 1e-3
    ref = np.array([[2.0, 2.0 - 0.4e-3, -1.0], [0.5, 0.1, 0.0]])
    near = ref.copy()
    near[0, 0] -= 0.5e-3  # token 1 now wins row 0; the reference gap (0.4e-3) is below tol
    rec, failures = judge_check(_Check("near", ref, near), tol)
    assert rec["passed"] and not failures and rec["top1_mismatches"] == 1 and rec["max_abs_diff"] <= tol

    ref2 = np.array([[2.0, 2.0 - 1.6e-3, -1.0]])
    flip = ref2.copy()
    flip[0, 0] -= 0.9e-3
    flip[0, 1] += 0.9e-3  # every logit within tol, but the reference gap 1.6e-3 > tol
    rec, failures = judge_check(_Check("flip", ref2, flip), tol)
    assert not rec["passed"] and rec["max_abs_diff"] <= tol
    assert any("beyond a near-tie" in f for f in failures)

    far = ref.copy()
    far[1, 1] += 1.0
    rec, failures = judge_check(_Check("far", ref, far), tol)
    assert not rec["passed"] and len(failures) == 2 and rec["top1_mismatches"] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_reference_that_is_not_finite_fails_the_validation(bad):
    """A model whose own (PyTorch) logits hold NaN or inf (a negative norm epsilon, a rotary base of 0): the rule's
    tolerance would be NaN and every comparison with it passes, so the validation fails first, naming the check;
    a finite reference still passes."""
    from onnxlm.export.validate import _Check, judge_checks

    ref = np.array([[1.0, 2.0, 0.5]])
    with pytest.raises(ExportError, match="the reference itself gives NaN or inf in logits"):
        judge_checks([_Check("logits", np.where(ref > 1, bad, ref), ref.copy())], None, None, "test")
    assert judge_checks([_Check("logits", ref, ref.copy())], None, None, "test")["checks"][0]["passed"]


@pytest.mark.parametrize("fx", ["tiny_gpt2", "tiny_llama"])
def test_logits_to_keep_last_position_equals_full_graph(fx, request):
    """The graph's logits_to_keep input: 1 gives [b, 1, V], bit-identical to the last row of 0 (every position)."""
    import onnxruntime as ort

    from onnxlm.runtime.plain.causal_lm import position_ids_from_mask

    art = request.getfixturevalue(fx)
    man = _manifest(art.onnx_dir)
    sess = ort.InferenceSession(str(art.onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[256, 256, 72, 101, 108], [104, 105, 32, 116, 104]], dtype=np.int64)
    mask = (ids != 256).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask)}
    for i in range(man["num_layers"]):
        for k in ("key", "value"):
            feeds[f"past_key_values.{i}.{k}"] = np.zeros((2, man["num_kv_heads"], 0, man["head_dim"]), np.float32)
    full = sess.run(["logits"], {**feeds, "logits_to_keep": np.array([0])})[0]
    last = sess.run(["logits"], {**feeds, "logits_to_keep": np.array([1])})[0]
    two = sess.run(["logits"], {**feeds, "logits_to_keep": np.array([2])})[0]
    assert full.shape == (2, 5, man["vocab_size"]) and last.shape == (2, 1, man["vocab_size"])
    np.testing.assert_array_equal(last[:, 0], full[:, -1])
    np.testing.assert_allclose(two, full[:, -2:], atol=1e-6)


def test_a_failed_export_leaves_no_folders_it_made(tmp_path, monkeypatch):
    """OUT_DIR's missing parents are made for the scratch directory beside it; a failure removes them again (not a
    folder that was there, nor one something else filled meanwhile)."""
    import onnxlm.export.export as ex

    def failing(model, family, out_dir, **kw):
        (Path(out_dir) / "model.onnx").write_bytes(b"partial")
        if (tmp_path / "kept" / "x").is_dir():  # another program writes beside the export meanwhile
            (tmp_path / "kept" / "x" / "other.txt").write_text("someone else's")
        raise RuntimeError("the exporter failed")

    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(ex, "export_onnx", failing)
    with pytest.raises(RuntimeError):
        export_model(RECIPES / "tiny-gpt2", tmp_path / "a" / "b" / "out", progress=False, kv_layout="plain")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    with pytest.raises(RuntimeError):
        export_model(RECIPES / "tiny-gpt2", tmp_path / "kept" / "x" / "y" / "out", progress=False, kv_layout="plain")
    assert sorted(p.name for p in (tmp_path / "kept" / "x").iterdir()) == ["other.txt"]  # y went, x stays
