"""One LanguageModel called from several Python threads at once: each caller gets exactly its solo answer.

Every call keeps its decoding state in objects of its own (CausalState / FusedState / Seq2SeqState, processors, rng,
_SampleRun); the model holds read-only data, onnxruntime sessions (whose `run` is thread-safe) and a stop-string
matcher cache. 8 threads with different prompts and parameters (greedy, batched greedy, sampling with a seed, beam
search, stop strings, streaming, score) start together at a barrier, with a tiny GIL switch interval so that their
steps interleave, and each compares with the same call made alone.
"""
from __future__ import annotations

import sys
import threading

import pytest

import onnxlm

ROUNDS = 2


def _gen(res) -> dict:
    out = {"sequences": res.sequences.tolist(), "text": list(res.text), "reasons": list(res.finish_reasons),
           "new": [list(r) for r in res.new_tokens]}
    if res.sequences_scores is not None:
        out["sequences_scores"] = res.sequences_scores.tolist()
    if res.scores is not None:
        out["scores"] = [s.tolist() for s in res.scores]
    return out


def _score(res) -> dict:
    return {"tokens": [list(t) for t in res.tokens], "logprobs": [lp.tolist() for lp in res.token_logprobs],
            "sums": res.sequence_logprobs.tolist()}


def _stream(model, prompt, **params) -> list:
    return [(s.batch_index, s.token_id, s.text, s.is_last, s.finish_reason) for s in model.stream(prompt, **params)]


def causal_jobs(model) -> dict:
    """name -> a call with its own prompt and parameters, returning plain comparable values."""
    return {
        "greedy": lambda: _gen(model.generate("Hello world", max_new_tokens=12, output_scores=True)),
        "greedy_batch": lambda: _gen(model.generate(["A", "a longer prompt here"], max_new_tokens=9)),
        "sample_seed": lambda: _gen(model.generate("Once upon", max_new_tokens=10, do_sample=True, seed=7,
                                                   top_p=0.9, temperature=1.3, num_return_sequences=2)),
        "sample_other_seed": lambda: _gen(model.generate("Once upon", max_new_tokens=10, do_sample=True, seed=8,
                                                         top_k=20)),
        "beam": lambda: _gen(model.generate("The cat", max_new_tokens=8, num_beams=3, num_return_sequences=2,
                                            eos_token_id=[])),
        "stop_strings": lambda: _gen(model.generate(["x", "yz"], max_new_tokens=14, stop_strings=["e", "a"],
                                                    repetition_penalty=1.3)),
        "stream": lambda: _stream(model, "Streaming", max_new_tokens=10, stop_strings=["o"]),
        "score": lambda: _score(model.score(["The cat sat on the mat.", "Hi there"], prepend_bos=True)),
    }


def seq2seq_jobs(model) -> dict:
    return {
        "greedy": lambda: _gen(model.generate("translate: house", max_new_tokens=8)),
        "greedy_batch": lambda: _gen(model.generate(["a", "translate: a longer sentence"], max_new_tokens=7)),
        "sample_seed": lambda: _gen(model.generate("summarize: x", max_new_tokens=8, do_sample=True, seed=3)),
        "sample_other_seed": lambda: _gen(model.generate("summarize: x", max_new_tokens=8, do_sample=True, seed=4,
                                                         top_p=0.8)),
        "beam": lambda: _gen(model.generate("translate: tree", max_new_tokens=6, num_beams=3)),
        "stop_strings": lambda: _gen(model.generate("q", max_new_tokens=10, stop_strings=["e"])),
        "stream": lambda: _stream(model, "stream this", max_new_tokens=8),
        "score": lambda: _score(model.score(["translate: house", "x"], targets=["Haus", "y z"])),
    }


def run_together(jobs: dict, rounds: int = ROUNDS) -> list[dict]:
    """Run every job in its own thread, all released at once by a barrier; -> one {name: result} per round."""
    results: list[dict] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: steps of different calls interleave
    try:
        for _ in range(rounds):
            barrier = threading.Barrier(len(jobs))
            got: dict = {}
            errors: list[BaseException] = []

            def work(name, job):
                try:
                    barrier.wait()
                    got[name] = job()
                except BaseException as exc:  # noqa: BLE001 - reported below, the test fails
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=item) for item in jobs.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in threads), "a thread did not finish"
            if errors:
                raise errors[0]
            results.append(got)
    finally:
        sys.setswitchinterval(old)
    return results


def check_concurrent_equals_solo(jobs: dict) -> None:
    assert len(jobs) == 8
    solo = {name: job() for name, job in jobs.items()}
    assert solo["sample_seed"] != solo["sample_other_seed"]  # the jobs differ from each other
    for together in run_together(jobs):
        for name in jobs:
            assert together[name] == solo[name], f"{name}: the concurrent answer differs from the solo one"


@pytest.fixture(scope="module")
def fused_llama(tmp_path_factory, tiny_llama):
    """tiny-llama exported with the fused layout (in-place KV buffers, IO binding): one more state type."""
    from onnxlm.export import export_model
    return export_model(tiny_llama.hf_dir, tmp_path_factory.mktemp("threads-fused") / "onnx", progress=False,
                        kv_layout="fused", validate=False)


def test_gpt2_from_8_threads_equals_solo(tiny_gpt2):
    check_concurrent_equals_solo(causal_jobs(onnxlm.load(tiny_gpt2.onnx_dir)))


def test_t5_from_8_threads_equals_solo(tiny_t5):
    check_concurrent_equals_solo(seq2seq_jobs(onnxlm.load(tiny_t5.onnx_dir)))


def test_fused_llama_from_8_threads_equals_solo(fused_llama):
    model = onnxlm.load(fused_llama)
    assert type(model).__name__ == "FusedCausalLM"
    check_concurrent_equals_solo(causal_jobs(model))

