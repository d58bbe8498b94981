"""Real tokenizers (../shared/data) go through export into the artifact and encode as the references say."""
import shutil

import pytest

import onnxlm

pytest.importorskip("torch", reason="building the tiny models needs the 'export' extra (torch)")


def _export_with_tokenizer(tmp_path, config, files):
    from onnxlm.export import export_model
    import torch
    from transformers import AutoModelForCausalLM, T5ForConditionalGeneration
    hf = tmp_path / "hf"
    torch.manual_seed(0)
    cls = T5ForConditionalGeneration if config.model_type == "t5" else AutoModelForCausalLM
    model = cls.from_config(config) if cls is AutoModelForCausalLM else cls(config)
    model.save_pretrained(hf)
    for f in files:  # the shared files are read-only: copy them into the temporary checkpoint only
        shutil.copy(f, hf / f.name)
    return onnxlm.load(export_model(hf, tmp_path / "onnx", progress=False))


def test_gpt2_bpe_tokenizer_through_runtime(tmp_path, shared_data):
    from transformers import GPT2Config
    src = shared_data / "gpt2-tokenizer"
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64)  # real vocab size 50257
    model = _export_with_tokenizer(tmp_path, config, [src / "vocab.json", src / "merges.txt"])
    assert model.tokenizer.encode("See you") == [6214, 345]
    assert model.tokenizer.encode("The alligator ate the apple.") == [464, 477, 23823, 15063, 262, 17180, 13]
    ids = [6214, 345, 2582, 11, 198, 198, 464, 4453, 286, 262, 26028]
    assert model.tokenizer.decode(ids) == "See you soon,\n\nThe Lord of the Rings"


def test_t5_small_tokenizer_through_runtime(tmp_path, shared_data):
    from transformers import T5Config
    src = shared_data / "t5-small-tokenizer"
    config = T5Config(vocab_size=32128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = _export_with_tokenizer(tmp_path, config, [src / "tokenizer.json", src / "tokenizer_config.json"])
    assert model.tokenizer.encode("translate English to German: The house is wonderful.") == \
        [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1]
    assert model.tokenizer.encode("Hello world") == [8774, 296, 1]
