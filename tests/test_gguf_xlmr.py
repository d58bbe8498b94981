"""XLM-RoBERTa embedding GGUFs (bge-m3, multilingual-e5: ``general.architecture = "bert"`` with a SentencePiece
Unigram vocabulary, ``tokenizer.ggml.model = "t5"``): a tiny seeded transformers ``XLMRobertaModel`` written as
llama.cpp's converter writes it (``XLMRobertaModel.modify_tensors``: the position table cut to start at
pad_token_id + 1, where RoBERTa's first token sits; one token type; the vocabulary of
tests/data/gguf_ugm/ugm_vocabs.py's ``xlmr``, whose ids equal llama.cpp's: tests/test_gguf_ugm.py), exported, and
``embed`` compared with transformers' own XLMRobertaModel on the same ids (<= 1e-4): the offset positions, the
``<s> text </s>`` ids and the pooling all line up with RoBERTa's."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("the XLM-R GGUF tests export (the 'export' extra: gguf, torch)", allow_module_level=True)

import onnxlm  # noqa: E402
from gguf_bert import perturbed, write_xlmr_gguf  # noqa: E402
from skips import missing  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "data" / "gguf_ugm"))
import ugm_vocabs  # noqa: E402

CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, type_vocab_size=1,
              max_position_embeddings=66, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
TEXTS = ["Hello world, how are you?", "a", "Le café est très bon, n'est-ce pas ?", "日本語のテキストです。",
         "  spaces   and\ttabs\n", "Σίσυφος ΣΊΣΥΦΟΣ", "def f(x):\n    return x ** 2"]


@pytest.fixture(scope="module")
def reference_and_file(tmp_path_factory):
    """(transformers' XLMRobertaModel, seed 0, LayerNorms and biases perturbed; its GGUF path)."""
    import gguf
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    try:
        meta = ugm_vocabs.vocab_metadata("xlmr")
    except FileNotFoundError as e:
        missing(f"the T5-small tokenizer files are not there ({e})")
    torch.manual_seed(0)
    model = perturbed(XLMRobertaModel(XLMRobertaConfig(vocab_size=len(meta["tokenizer.ggml.tokens"]), **CONFIG),
                                      add_pooling_layer=False).eval())
    path = tmp_path_factory.mktemp("gguf_xlmr") / "tiny-xlmr.gguf"
    write_xlmr_gguf(path, model, meta, int(gguf.PoolingType.CLS))  # bge-m3's pooling
    return model, path


@pytest.fixture(scope="module")
def exported(reference_and_file, tmp_path_factory):
    from onnxlm.export import export_model

    return onnxlm.load(export_model(reference_and_file[1], tmp_path_factory.mktemp("gguf_xlmr_onnx") / "m",
                                    progress=False))


def test_ids_are_bos_text_eos_as_llama_cpp_puts_them(exported):
    """bge-m3's flags (add_bos and add_eos): ``<s> text </s>``; the manifest names the ids and the model's pooling."""
    ids = exported.tokenizer.encode("Hello world")
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) > 2
    m = exported.manifest
    assert m["kind"] == "embedding" and m["pooling"] == "cls"
    assert m["special_tokens"]["bos_token_id"] == 0 and m["special_tokens"]["sep_token_id"] == 2
    assert m["special_tokens"]["pad_token_id"] == 1


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_embed_equals_transformers_xlm_roberta(exported, reference_and_file, pooling):
    import torch

    model, _ = reference_and_file
    res = exported.embed(TEXTS, pooling=pooling, batch_size=3)  # batches of different lengths
    for text, got in zip(TEXTS, res.embeddings):
        ids = exported.tokenizer.encode(text)
        with torch.no_grad():  # RoBERTa's own positions: pad_token_id + 1 onwards
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        want = hidden.mean(axis=0) if pooling == "mean" else hidden[0]
        want = want / np.linalg.norm(want)
        assert np.abs(got - want).max() <= 1e-4, (text, np.abs(got - want).max())


def test_the_offset_matters(exported, reference_and_file):
    """Without the converter's cut (positions counted from 0 in RoBERTa's own table) the states differ: the test
    above sees the positions."""
    import torch

    model, _ = reference_and_file
    ids = exported.tokenizer.encode(TEXTS[0])
    with torch.no_grad():
        shifted = model(input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None]).last_hidden_state
    got = exported.embed([ids], pooling="cls", normalize=False).embeddings[0]
    assert np.abs(got - shifted[0, 0].numpy()).max() > 1e-2
