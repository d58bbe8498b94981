"""Prefix caching (runtime/prefix_cache.py): the store (longest prefix, least recently used evicted by bytes), a row's
snapshot resumed equal to a cold start (plain and fused layouts), the scheduler's answers equal to a cold one's with
hits (greedy and seeded sampling, requests sharing a system prompt, a chat's next turn, rows joining a running
batch), and the server's /metrics counts."""
from __future__ import annotations

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.decoding.scheduler import Request, Scheduler
from onnxlm.runtime.prefix_cache import PrefixCache, Snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SYSTEM = "You are a helpful assistant who answers in short sentences about anything at all. "
TURNS = ["What is the capital of France?", "And of Italy?", "Why?", "Say more."]


@pytest.fixture(scope="session")
def fused_llama_dir(tmp_path_factory, tiny_llama):
    from onnxlm.export import export_model
    return export_model(tiny_llama.hf_dir, tmp_path_factory.mktemp("prefix-fused") / "onnx", progress=False,
                        kv_layout="fused")


@pytest.fixture(scope="module", params=["plain", "fused"])
def model(request, tiny_llama):
    return onnxlm.load(tiny_llama.onnx_dir if request.param == "plain" else request.getfixturevalue("fused_llama_dir"))


# ---------------------------------------------------------------------------------------------------- the store
def _kv(n: int, nbytes_per_pos: int = 64) -> dict:
    return {"k": np.zeros((1, n, nbytes_per_pos // 4), np.float32)}


def test_lookup_finds_the_longest_prefix_and_keeps_one_token_to_feed():
    cache = PrefixCache(10**6)
    cache.put([1, 2, 3, 4], _kv(4))
    cache.put([1, 2, 9], _kv(3))
    snap, reuse = cache.lookup([1, 2, 3, 4, 5])
    assert list(snap.ids) == [1, 2, 3, 4] and reuse == 4
    snap, reuse = cache.lookup([1, 2, 3, 4])  # the whole entry: the last token is still fed
    assert list(snap.ids) == [1, 2, 3, 4] and reuse == 3
    snap, reuse = cache.lookup([1, 2, 9, 9])
    assert list(snap.ids) == [1, 2, 9] and reuse == 3
    assert cache.lookup([7, 1, 2]) == (None, 0)
    assert (cache.hits, cache.misses, cache.reused_tokens) == (3, 1, 10)


def test_least_recently_used_go_first_and_prefixes_are_superseded():
    per = Snapshot(np.arange(4), _kv(4)).nbytes
    cache = PrefixCache(2 * per)
    cache.put([1, 2, 3, 4], _kv(4))
    cache.put([5, 6, 7, 8], _kv(4))
    cache.lookup([1, 2, 3, 4, 0])  # [1, 2, 3, 4] used last: [5, 6, 7, 8] goes first
    cache.put([9, 9, 9, 9], _kv(4))
    assert [list(s.ids) for s in cache.entries.values()] == [[1, 2, 3, 4], [9, 9, 9, 9]]
    assert cache.bytes == 2 * per
    cache.put([1, 2, 3, 4, 5, 6], _kv(6))  # holds every lookup [1, 2, 3, 4] would serve: replaces it (and evicts)
    assert [list(s.ids) for s in cache.entries.values()] == [[1, 2, 3, 4, 5, 6]]
    assert cache.bytes == Snapshot(np.arange(6), _kv(6)).nbytes
    cache.put(list(range(100)), _kv(100))  # larger than the whole cache: not kept
    assert len(cache.entries) == 1
    with pytest.raises(onnxlm.ParameterError, match="prefix_cache_bytes"):
        PrefixCache(-1)


# ---------------------------------------------------------------------------------------------------- the layouts
def test_resume_from_a_snapshot_equals_a_cold_start(model):
    """A left-padded batch's row snapshotted, resumed from its first positions with the rest fed in one pass: the
    next-token logits equal a cold start on the whole prompt, and decoding on equals generate's ids."""
    long, short = model.tokenizer.encode(SYSTEM + TURNS[0]), model.tokenizer.encode("Hello")
    ids, mask = model.prepare_inputs([short, long])
    state, _ = model.start(ids, mask)
    kv = state.snapshot(1)
    assert next(iter(kv.values())).shape[1] == len(long)
    prompt = long + model.tokenizer.encode(" And more.", add_special_tokens=False)
    for reuse in (1, len(long) - 3, len(long)):
        resumed, logits = model.resume(kv, reuse, prompt[reuse:])
        cold_state, cold = model.start(np.array([prompt]), np.ones((1, len(prompt)), np.int64))
        assert np.abs(logits - cold).max() <= 1e-4
        tok = np.array([int(cold.argmax())])
        assert np.abs(resumed.advance(tok) - cold_state.advance(tok)).max() <= 1e-4


# ---------------------------------------------------------------------------------------------------- the scheduler
def _run(model, prompts, params, cache=None, join_at=None, defer=False) -> list[Request]:
    """Drive a scheduler over ``prompts`` (joining at steps ``join_at``); ``defer``: as the server's engine does,
    each step's prefix-cache copies are stored after the step has returned its tokens."""
    sched = Scheduler(model, max_rows=8, prefix_cache=cache)
    reqs = [Request(list(p), model.resolve_config(kw)) for p, kw in zip(prompts, params)]
    join_at = join_at or [0] * len(reqs)
    step, pending = 0, list(zip(join_at, reqs))
    while pending or sched.busy:
        for at, req in [x for x in pending if x[0] <= step]:
            sched.add(req)
            pending.remove((at, req))
        sched.step(defer_snapshots=defer)
        if defer:
            sched.store_snapshots()
        step += 1
    assert all(r.done and r.error is None for r in reqs)
    return reqs


def test_deferred_snapshots_store_what_immediate_ones_store(model):
    """The server stores a step's snapshots after handing out its tokens (``step(defer_snapshots=True)``, then
    ``store_snapshots()``): until then they are views of the state's buffers. With rows finishing at different steps
    (the batch shrinks into new buffers), a one-token answer, two samples of one prompt and a row joining later, the
    cache ends with the same entries, bit for bit, as when every step copies before returning; and nothing is stored
    before ``store_snapshots``."""
    prompts = [model.tokenizer.encode(SYSTEM + t) for t in TURNS]
    params = [{"max_new_tokens": 3, "eos_token_id": None, "do_sample": False},
              {"max_new_tokens": 1, "eos_token_id": None, "do_sample": False},
              {"max_new_tokens": 6, "eos_token_id": None, "do_sample": False},
              {"max_new_tokens": 4, "eos_token_id": None, "do_sample": True, "seed": 3, "num_return_sequences": 2}]
    caches = {}
    for defer in (False, True):
        caches[defer] = PrefixCache(64 * 2**20)
        _run(model, prompts, params, caches[defer], join_at=[0, 0, 1, 2], defer=defer)
    assert list(caches[True].entries) == list(caches[False].entries) and len(caches[True].entries) >= 4
    for key, snap in caches[False].entries.items():
        deferred = caches[True].entries[key]
        for name, a in snap.kv.items():
            assert deferred.kv[name].base is None and np.array_equal(deferred.kv[name], a), name  # own copies
    sched = Scheduler(model, max_rows=8, prefix_cache=PrefixCache(64 * 2**20))
    sched.add(Request(prompts[0], model.resolve_config(params[1])))
    sched.step(defer_snapshots=True)
    assert not sched.prefix_cache.entries
    sched.store_snapshots()
    assert [list(s.ids) for s in sched.prefix_cache.entries.values()] == [prompts[0]]


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sample"])
def test_shared_system_prompt_answers_equal_a_cold_scheduler(model, sample):
    """Four requests sharing a long system prompt, two joining later: with the cache they reuse its positions (hits,
    reused tokens) and every request's ids equal the cold scheduler's."""
    prompts = [model.tokenizer.encode(SYSTEM + t) for t in TURNS]
    kw = {"max_new_tokens": 6, "eos_token_id": None}
    params = [dict(kw, do_sample=True, seed=7 + i, temperature=0.9) if sample else dict(kw, do_sample=False)
              for i in range(len(prompts))]
    cold = _run(model, prompts, params, join_at=[0, 1, 3, 3])
    cache = PrefixCache(64 * 2**20)
    _run(model, prompts[:1], params[:1], cache)  # warms the cache with the system prompt + first question
    warm = _run(model, prompts, params, cache, join_at=[0, 1, 3, 3])
    assert [r.new_ids for r in warm] == [r.new_ids for r in cold]
    assert cache.hits >= len(prompts) and cache.reused_tokens >= len(prompts) * len(model.tokenizer.encode(SYSTEM)) - 8


def test_the_next_turn_of_a_chat_reuses_the_answer(model):
    """Turn 2's prompt is turn 1's prompt + answer + the new message: the finished request's whole sequence was kept,
    so only the new message is prefilled; the answer equals a cold run's."""
    first = model.tokenizer.encode(SYSTEM + TURNS[0])
    cache = PrefixCache(64 * 2**20)
    kw = {"max_new_tokens": 8, "eos_token_id": None, "do_sample": False}
    (one,) = _run(model, [first], [kw], cache)
    second = first + one.new_ids[0] + model.tokenizer.encode(" " + TURNS[1], add_special_tokens=False)
    before = cache.reused_tokens
    (two,) = _run(model, [second], [kw], cache)
    assert cache.reused_tokens - before == len(first) + len(one.new_ids[0]) - 1  # all but the answer's last token
    (cold,) = _run(model, [second], [kw])
    assert two.new_ids == cold.new_ids


def test_server_metrics_count_hits(tiny_llama):
    """Through `onnxlm serve`: the same chat twice; the second is a hit, /metrics counts it, answers are equal; a
    server started with prefix_cache_mb=0 counts nothing."""
    import httpx
    from serve_util import start, wait_health

    body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TURNS[0]}],
            "max_tokens": 6, "temperature": 0}
    for mb in (16, 0):
        srv = start(lambda: onnxlm.load(tiny_llama.onnx_dir), prefix_cache_mb=mb)
        try:
            wait_health(srv.url)
            a = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60).json()
            b = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60).json()
            m = httpx.get(srv.url + "/metrics", timeout=10).json()
        finally:
            srv.stop()
        assert a["choices"][0]["message"] == b["choices"][0]["message"]
        if mb:
            assert m["prefix_cache_hits"] == 1 and m["prefix_cache_reused_tokens"] >= a["usage"]["prompt_tokens"] - 1
            assert m["prefix_cache_entries"] >= 1 and m["prefix_cache_bytes"] > 0
        else:
            assert m["prefix_cache_hits"] == 0 and m["prefix_cache_entries"] == 0
