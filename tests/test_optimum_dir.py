"""A plain Optimum export directory (no onnxlm.json) loads too: I/O names are read from the sessions, and the
results equal transformers (GPT-2 without a position_ids input; T5 with decoder + decoder_with_past or merged)."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

import onnxlm
from torch_ref import left_padded_batch, right_padded_batch


def optimum_export(hf_dir, out, task):
    from optimum.exporters.onnx import main_export
    main_export(str(hf_dir), output=str(out), task=task, no_post_process=False)
    return out


def test_optimum_gpt2_dir_loads_and_matches_greedy(tiny_gpt2, tmp_path):
    out = optimum_export(tiny_gpt2.hf_dir, tmp_path / "opt", "text-generation-with-past")
    model = onnxlm.load(out)
    assert model.manifest.get("optimum") and not (out / "onnxlm.json").exists()
    ref = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()
    ids = np.random.default_rng(0).integers(0, 250, (1, 6))
    got = model.generate(ids, max_new_tokens=8, eos_token_id=[], pad_token_id=256)
    with torch.no_grad():
        want = ref.generate(torch.tensor(ids), max_new_tokens=8, do_sample=False, eos_token_id=None,
                            pad_token_id=256).numpy()
    np.testing.assert_array_equal(got.sequences, want)


@pytest.mark.parametrize("drop_merged", [False, True], ids=["merged", "decoder+with_past"])
def test_optimum_t5_dir_loads_and_matches_greedy(tiny_t5, tmp_path, drop_merged):
    out = optimum_export(tiny_t5.hf_dir, tmp_path / "opt", "text2text-generation-with-past")
    if drop_merged:
        (out / "decoder_model_merged.onnx").unlink()
    model = onnxlm.load(out)
    assert ("decoder_with_past" in model.manifest["graphs"]) == drop_merged
    ref = T5ForConditionalGeneration.from_pretrained(tiny_t5.hf_dir).eval()
    src, mask = right_padded_batch(np.random.default_rng(1), [6, 3], 250, 256, 258)
    got = model.generate(src, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask), max_new_tokens=8,
                            do_sample=False, eos_token_id=None).numpy()
    np.testing.assert_array_equal(got.sequences, want)
