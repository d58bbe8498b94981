"""The IO-binding path (what CUDA uses): KV cache and encoder output stay OrtValues between steps, beam search
reorders them with the on-device Gather graph, and the results equal the plain numpy path. Run here on the CPU
device so it is exercised on every machine; tests/test_cuda.py repeats the parity checks on CUDA."""
import numpy as np
import onnxruntime as ort
import pytest

import onnxlm
from onnxlm.runtime.device_gather import gather_rows
from onnxlm.runtime.plain.kv_cache import KVCache


def bound(model):
    for name in ("decoder", "encoder", "with_past"):
        runner = getattr(model, name, None)
        if runner is not None:
            runner.io_binding = True
    return model


@pytest.mark.parametrize("dtype,shape", [(np.float32, (3, 2, 5, 4)), (np.float16, (3, 2, 5, 4)), (np.float32, (3, 7, 8))])
def test_gather_rows_on_ortvalues(dtype, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    rows = np.array([2, 2, 0, 1])
    out = gather_rows(ort.OrtValue.ortvalue_from_numpy(x), rows)
    assert isinstance(out, ort.OrtValue)
    np.testing.assert_array_equal(out.numpy(), x[rows])


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_t5"])
def test_bound_path_equals_numpy_path(request, fixture):
    art = request.getfixturevalue(fixture)
    plain, dev = onnxlm.load(art.onnx_dir), bound(onnxlm.load(art.onnx_dir))
    prompts = ["Hello world", "A longer prompt here"]
    for kw in (dict(max_new_tokens=6, eos_token_id=[]),
               dict(max_new_tokens=6, eos_token_id=[], num_beams=3, num_return_sequences=2, output_scores=True)):
        a, b = plain.generate(prompts, **kw), dev.generate(prompts, **kw)
        np.testing.assert_array_equal(a.sequences, b.sequences)
        if a.sequences_scores is not None:
            assert np.abs(a.sequences_scores - b.sequences_scores).max() <= 1e-6
    ids, mask = dev.prepare_inputs(prompts)
    state, _ = dev.start(ids, mask)
    state.advance(np.array([5, 6]))
    assert all(isinstance(v, ort.OrtValue) for v in state.cache.tensors.values())
    state.select(np.array([1, 1]))
    assert all(isinstance(v, ort.OrtValue) for v in state.cache.tensors.values())


def test_cuda_sessions_multiply_fp32_in_fp32(tiny_gpt2, monkeypatch):
    """provider='cuda' asks onnxruntime's CUDA provider for use_tf32=0: its default, TF32 on Ampere and later GPUs,
    put the tiny models' logits 2.6e-3 to 1.5e-2 from transformers' on an H200 (docs/design.md, "CUDA"). The
    options given to onnxruntime are read back here, where no GPU is needed."""
    from onnxlm.runtime import session

    seen, real = [], ort.InferenceSession

    def fake_session(path, sess_options=None, providers=None, **kw):
        seen.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
    monkeypatch.setattr(session.ort, "InferenceSession", fake_session)
    session.make_session(tiny_gpt2.onnx_dir / "model.onnx", "cuda", 1)
    session.make_session(tiny_gpt2.onnx_dir / "model.onnx", "cpu", 1)
    assert seen == [[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"], ["CPUExecutionProvider"]]
