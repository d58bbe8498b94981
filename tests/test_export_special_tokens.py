"""Export never invents special tokens: ids come from the source's generation config, model config or the special
tokens its tokenizer declares; a derived one (pad from EOS, as transformers' generate derives it) is recorded as
derived. A source without a tokenizer exports as an ids-only artifact that refuses text clearly."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the 'export' extra")
pytest.importorskip("optimum.exporters.onnx", reason="export tests need the 'export' extra")

import onnxlm  # noqa: E402
from onnxlm.export import export_model  # noqa: E402
from onnxlm.runtime.errors import ModelFileError  # noqa: E402


def _manifest(d):
    return json.loads((d / "onnxlm.json").read_text())


@pytest.fixture(scope="module")
def no_pad_no_bos_model():
    """A 1-layer GPT-2 whose config declares only an EOS (258); its byte-level vocabulary holds <s> and <pad>."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=260, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=None,
                     eos_token_id=258)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.bos_token_id = None
    return model


def test_nothing_is_guessed_and_pad_is_recorded_as_derived(tmp_path, no_pad_no_bos_model, tiny_gpt2):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_gpt2.onnx_dir / "tokenizer.json"))
    assert tok.token_to_id("<s>") is not None and tok.token_to_id("<pad>") is not None  # there, but undeclared
    out = export_model(no_pad_no_bos_model, tmp_path / "a", tokenizer=tok, progress=False)
    specials = _manifest(out)["special_tokens"]
    assert specials["bos_token_id"] is None  # not "<s>" from the vocabulary
    assert specials["eos_token_id"] == 258
    assert specials["pad_token_id"] == 258 and specials["derived"] == {"pad_token_id": "eos_token_id"}
    gen = json.loads((out / "generation_config.json").read_text())
    assert "pad_token_id" not in gen and "bos_token_id" not in gen  # the file says what the source says
    model = onnxlm.load(out)
    assert model.pad_id == 258  # the runtime derives the same pad


def test_declared_specials_are_not_marked_derived(tiny_gpt2):
    specials = _manifest(tiny_gpt2.onnx_dir)["special_tokens"]
    assert specials["derived"] == {}
    assert (specials["bos_token_id"], specials["eos_token_id"], specials["pad_token_id"]) == (257, 258, 256)


@pytest.fixture(scope="module")
def ids_only(tmp_path_factory, tiny_gpt2):
    """tiny-gpt2's transformers dir without any tokenizer file, exported."""
    src = tmp_path_factory.mktemp("ids-only-src")
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny_gpt2.hf_dir / name, src / name)
    with pytest.warns(UserWarning, match="ids only"):
        out = export_model(src, tmp_path_factory.mktemp("ids-only") / "onnx", progress=False)
    return out


def test_ids_only_artifact_generates_from_ids(ids_only, tiny_gpt2):
    from transformers import AutoModelForCausalLM

    assert not (ids_only / "tokenizer.json").exists()
    model = onnxlm.load(ids_only)
    assert model.tokenizer is None
    ids = [[72, 101, 108, 108, 111], [104, 105]]
    got = model.generate(ids, max_new_tokens=6, eos_token_id=[])
    want = onnxlm.load(tiny_gpt2.onnx_dir).generate(ids, max_new_tokens=6, eos_token_id=[])
    np.testing.assert_array_equal(got.sequences, want.sequences)
    ref = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()
    with torch.no_grad():
        hf = ref.generate(input_ids=torch.tensor([ids[0]]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                          pad_token_id=model.pad_id)
    np.testing.assert_array_equal(got.sequences[:1], hf.numpy())
    assert model.score(ids[0]).token_logprobs[0].shape == (4,)


@pytest.mark.parametrize("call", [
    lambda m: m.generate("hello"), lambda m: m.score("hello"), lambda m: list(m.stream("hello")),
    lambda m: m.next_token_distribution("hello"),
], ids=["generate", "score", "stream", "next_token_distribution"])
def test_ids_only_artifact_refuses_text_clearly(ids_only, call):
    model = onnxlm.load(ids_only)
    with pytest.raises(ModelFileError, match="tokenizer"):
        call(model)


def test_ids_only_artifact_cli_text_is_one_error_line(ids_only):
    proc = subprocess.run([sys.executable, "-m", "onnxlm", "generate", str(ids_only), "hello"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("onnxlm: error:")]
    assert len(lines) == 1 and "tokenizer" in lines[0]
