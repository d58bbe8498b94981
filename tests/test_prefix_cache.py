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
from scheduler_util import run_scheduler

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
    cache.put([1, 2, 3], _kv(3))  # covered by [1, 2, 3, 4, 5, 6], which serves its every lookup: not kept
    assert [list(s.ids) for s in cache.entries.values()] == [[1, 2, 3, 4, 5, 6]]
    assert cache.covers([1, 2, 3]) and cache.covers([1, 2, 3, 4, 5, 6]) and not cache.covers([1, 2, 4])
    with pytest.raises(onnxlm.ParameterError, match="prefix_cache_bytes"):
        PrefixCache(-1)



def test_checkpoints_bound_where_an_entry_resumes_and_count_in_its_size():
    """An entry with checkpoints (a hybrid model's recurrent states after some lengths) resumes only at one of those:
    the longest within the shared prefix (the whole prompt only with its logits too), else a miss. A superseding
    entry takes the checkpoints of those it replaces, ``attach_logits`` adds one beside its logits, ``lend`` hands
    the state only at the entry's whole length, ``state_at`` gives keys/values and states, and their bytes count;
    where not all fit, the prompt's and then the longest lengths stay, a checkpoint before its logits, and an entry
    no checkpoint fits with is not kept."""
    def state(v):
        return {"conv": np.full((2, 4), v, np.float32)}  # 32 bytes

    class Owner:  # the dropped decoding state an entry lends
        def rollback(self, counts):
            self.counts = list(counts)

    logits, owner = np.ones(8, np.float32), Owner()  # 32 bytes
    cache = PrefixCache(10**6)
    cache.put([1, 2, 3, 4], _kv(4), logits, checkpoint=state(4))
    cache.put([1, 2, 3, 4, 5, 6, 7], _kv(7), logits, owner=owner, first=4, checkpoint=state(7))
    (entry,) = cache.entries.values()
    assert sorted(entry.checkpoints) == [4, 7] and sorted(entry.logits) == [4, 7]
    assert entry.nbytes == Snapshot(entry.ids, entry.kv).nbytes + 4 * 32 == cache.bytes
    assert cache.lookup([1, 2, 3, 4, 5, 6, 9])[1] == 4  # shares 6 ids: resumed at the checkpoint after 4
    assert cache.lookup([1, 2, 3, 4])[1] == 4  # the whole prompt: its checkpoint and its logits
    assert cache.lookup([1, 2, 3, 4, 5, 6, 7, 8])[1] == 7
    assert cache.lookup([1, 2, 3, 9]) == (None, 0)  # no checkpoint within the 3 shared ids
    snap, reuse = cache.lookup([1, 2, 3, 4, 5])
    assert snap is entry and reuse == 4
    assert entry.state_at(4)["conv"][0, 0] == 4 and entry.state_at(4)["k"] is entry.kv["k"]
    assert cache.lend(entry, 4) is None and entry.owner is owner  # its state holds 7: not lent at 4
    assert cache.lend(entry, 7) is owner and owner.counts == [0] and entry.owner is None
    cache.attach_logits([1, 2, 3, 4, 5], logits, state(5))
    assert sorted(entry.checkpoints) == [4, 5, 7] and 5 in entry.logits and cache.lookup([1, 2, 3, 4, 5])[1] == 5
    assert cache.bytes == entry.nbytes == Snapshot(entry.ids, entry.kv).nbytes + 6 * 32

    base = Snapshot(np.arange(7), _kv(7)).nbytes
    small = PrefixCache(base + 3 * 32)  # the prompt's checkpoint and logits, then the longest's checkpoint
    small.put([1, 2, 3, 4], _kv(4), logits, checkpoint=state(4))
    small.put([1, 2, 3, 4, 5, 6, 7], _kv(7), logits, first=4, checkpoint=state(7))
    (entry,) = small.entries.values()
    assert sorted(entry.checkpoints) == [4, 7] and sorted(entry.logits) == [4] and small.bytes == entry.nbytes
    big = {"conv": np.zeros((4, 4), np.float32)}  # 64 bytes: room for the longest's logits, not its checkpoint
    uneven = PrefixCache(base + 64 + 32 + 32)
    uneven.put([1, 2, 3, 4], _kv(4), logits, checkpoint=big)
    uneven.put([1, 2, 3, 4, 5, 6, 7], _kv(7), logits, first=4, checkpoint=big)
    (entry,) = uneven.entries.values()
    assert sorted(entry.checkpoints) == [4] and sorted(entry.logits) == [4]  # no logits without their checkpoint
    uneven.attach_logits([1, 2, 3, 4, 5], logits)  # no checkpoint given: nothing attached
    assert 5 not in entry.logits and uneven.bytes == entry.nbytes
    tiny = PrefixCache(base + 16)  # no checkpoint fits beside the keys/values: not kept, the cache as it was
    tiny.put([1, 2, 3, 4], _kv(4), logits, checkpoint=state(4))
    tiny.put([1, 2, 3, 4, 5, 6, 7], _kv(7), logits, first=4, checkpoint=state(7))
    assert [len(e.ids) for e in tiny.entries.values()] == [4] and tiny.bytes == next(iter(tiny.entries.values())).nbytes

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
        run_scheduler(model, prompts, params, caches[defer], join_at=[0, 0, 1, 2], defer=defer)
    assert list(caches[True].entries) == list(caches[False].entries) and len(caches[True].entries) >= 4
    for key, snap in caches[False].entries.items():
        deferred = caches[True].entries[key]
        for name, a in snap.kv.items():
            assert np.array_equal(deferred.kv[name], a), name  # copies, or a lone last request's dropped buffers
        assert set(deferred.logits) == set(snap.logits)
        assert all(np.array_equal(deferred.logits[n], v) for n, v in snap.logits.items())
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
    cold = run_scheduler(model, prompts, params, join_at=[0, 1, 3, 3])
    cache = PrefixCache(64 * 2**20)
    run_scheduler(model, prompts[:1], params[:1], cache)  # warms the cache with the system prompt + first question
    warm = run_scheduler(model, prompts, params, cache, join_at=[0, 1, 3, 3])
    assert [r.new_ids for r in warm] == [r.new_ids for r in cold]
    assert cache.hits >= len(prompts) and cache.reused_tokens >= len(prompts) * len(model.tokenizer.encode(SYSTEM)) - 8


def test_the_next_turn_of_a_chat_reuses_the_answer(model):
    """Turn 2's prompt is turn 1's prompt + answer + the new message: the finished request's whole sequence was kept,
    so only the new message is prefilled; the answer equals a cold run's."""
    first = model.tokenizer.encode(SYSTEM + TURNS[0])
    cache = PrefixCache(64 * 2**20)
    kw = {"max_new_tokens": 8, "eos_token_id": None, "do_sample": False}
    (one,) = run_scheduler(model, [first], [kw], cache)
    second = first + one.new_ids[0] + model.tokenizer.encode(" " + TURNS[1], add_special_tokens=False)
    before = cache.reused_tokens
    (two,) = run_scheduler(model, [second], [kw], cache)
    assert cache.reused_tokens - before == len(first) + len(one.new_ids[0]) - 1  # all but the answer's last token
    (cold,) = run_scheduler(model, [second], [kw])
    assert two.new_ids == cold.new_ids


def test_server_metrics_count_hits(tiny_llama):
    """Through `onnxlm serve`: the same chat twice; the second is a hit, /metrics counts it, answers are equal; a
    server started with prefix_cache_mb=0 counts nothing."""
    from serve_util import sent_twice

    body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TURNS[0]}],
            "max_tokens": 6, "temperature": 0}
    for mb in (16, 0):
        a, b, m = sent_twice(lambda: onnxlm.load(tiny_llama.onnx_dir), "/v1/chat/completions", body, mb)
        assert a["choices"][0]["message"] == b["choices"][0]["message"]
        if mb:
            assert m["prefix_cache_hits"] == 1 and m["prefix_cache_reused_tokens"] >= a["usage"]["prompt_tokens"] - 1
            assert m["prefix_cache_entries"] >= 1 and m["prefix_cache_bytes"] > 0
        else:
            assert m["prefix_cache_hits"] == 0 and m["prefix_cache_entries"] == 0


def test_pooled_buffers_holding_stale_nan_answer_as_a_cold_scheduler(fused_llama_dir):
    """A server keeps freed KV buffers for reuse (``model.keep_kv_buffers``): a pooled set holds an earlier request's
    values past what its new owner writes. Every kept mapping is filled with NaN before the second pass: the
    requests (shared system prompt, cache hits, rows joining a running batch, greedy and seeded sampling) answer
    exactly as a cold scheduler on fresh buffers, so no stale position is ever read; and the pool was used."""
    prompts = [onnxlm.load(fused_llama_dir).tokenizer.encode(SYSTEM + t) for t in TURNS]
    kw = {"max_new_tokens": 6, "eos_token_id": None}
    params = [dict(kw, do_sample=True, seed=3, temperature=0.9), dict(kw, do_sample=False),
              dict(kw, do_sample=False, num_return_sequences=1), dict(kw, do_sample=True, seed=5)]
    cold = run_scheduler(onnxlm.load(fused_llama_dir), prompts, params, join_at=[0, 1, 3, 3])
    model = onnxlm.load(fused_llama_dir)
    pool = model.keep_kv_buffers(256 << 20)
    cache = PrefixCache(64 * 2**20)
    run_scheduler(model, prompts, params, cache, join_at=[0, 1, 3, 3])  # fills the cache and the pool
    assert pool.bytes > 0
    for mapping in pool._kept.values():
        np.frombuffer(mapping, np.float32)[:] = np.nan
    warm = run_scheduler(model, prompts, params, cache, join_at=[0, 1, 3, 3], defer=True)
    assert [r.new_ids for r in warm] == [r.new_ids for r in cold]
    assert pool.reused > 0 and cache.hits >= len(prompts)


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sample"])
def test_a_prompt_sent_again_needs_no_forward_pass(model, sample, monkeypatch):
    """The cache keeps the next-token logits after each prompt (and after each finished sequence): the same prompt
    sent again (a retry, "regenerate") resumes all of its positions from the entry of its earlier answer, which
    starts with it, and takes its first token from those logits, with no forward pass (fused: counted); the answers
    equal a cold scheduler's, for a long answer and a one-token one."""
    prompt = model.tokenizer.encode(SYSTEM + TURNS[2])
    for new in (6, 1):
        kw = {"max_new_tokens": new, "eos_token_id": None, "do_sample": sample, **({"seed": 11} if sample else {})}
        (cold,) = run_scheduler(model, [prompt], [kw])
        cache = PrefixCache(64 * 2**20)
        run_scheduler(model, [prompt], [kw], cache, defer=True)
        (entry,) = cache.entries.values()
        assert len(entry.ids) == len(prompt) + new - 1 and len(prompt) in entry.logits
        passes = []
        if hasattr(model, "kv_pool"):
            run = type(model)._run
            monkeypatch.setattr(type(model), "_run", lambda self, *a: passes.append(1) or run(self, *a))
        before = cache.reused_tokens
        (again,) = run_scheduler(model, [prompt], [kw], cache, defer=True)
        monkeypatch.undo()
        assert cache.reused_tokens - before == len(prompt)
        assert again.new_ids == cold.new_ids
        assert len(passes) == (new - 1 if hasattr(model, "kv_pool") else 0)


def test_a_lone_requests_buffers_become_the_cache_entry(fused_llama_dir):
    """When the last running request finishes, its row's keys/values are kept as views of the dropped state's
    buffers (no copy); with other rows still running, the cache gets copies."""
    model = onnxlm.load(fused_llama_dir)
    kw = {"max_new_tokens": 4, "eos_token_id": None, "do_sample": False}
    cache = PrefixCache(64 * 2**20)
    (req,) = run_scheduler(model, [model.tokenizer.encode(SYSTEM + TURNS[0])], [kw], cache, defer=True)
    (entry,) = cache.entries.values()
    assert all(a.base is not None for a in entry.kv.values()) and entry.owner is not None  # views, not copies
    prompt = list(req.ids)
    nxt = prompt + req.new_ids[0] + model.tokenizer.encode(" " + TURNS[1], add_special_tokens=False)
    for ids in (prompt, nxt):  # sent again (the entry is cut to the prompt), then the next turn on its answer
        lent = next(e for e in cache.entries.values() if list(e.ids[:len(prompt)]) == prompt)
        block = next(iter(lent.kv.values())).base
        (warm,) = run_scheduler(model, [ids], [kw], cache, defer=True)
        (cold,) = run_scheduler(model, [ids], [kw])
        assert warm.new_ids == cold.new_ids and lent.owner is None  # decoded on the lent state
        assert len(lent.ids) <= len(ids) and list(lent.ids) == ids[:len(lent.ids)]
        (entry,) = [e for e in cache.entries.values() if len(e.ids) == len(ids) + 3]
        assert next(iter(entry.kv.values())).base is block and entry.owner is not None  # the same buffers again
        assert cache.bytes == sum(e.nbytes for e in cache.entries.values())  # the cut entry's bytes followed it
    assert entry.nbytes == next(iter(entry.kv.values())).base.nbytes + entry.ids.nbytes + sum(
        v.nbytes for v in entry.logits.values())
    cache = PrefixCache(64 * 2**20)
    short = dict(kw, max_new_tokens=2)
    run_scheduler(model, [model.tokenizer.encode(SYSTEM + t) for t in TURNS[:2]], [short, kw], cache, defer=True)
    first = next(e for e in cache.entries.values() if len(e.ids) == len(model.tokenizer.encode(SYSTEM + TURNS[0])) + 1)
    assert all(a.base is None for a in first.kv.values())  # copied: the other row was still running


def test_a_prompt_answered_in_one_token_is_lent_again_each_time(fused_llama_dir):
    """The same prompt with max_new_tokens 1, three times: each time the entry lends its state and gets it back
    (the dropped state holds exactly the entry's ids, in the same buffers), so no request copies or runs a pass."""
    model = onnxlm.load(fused_llama_dir)
    kw = {"max_new_tokens": 1, "eos_token_id": None, "do_sample": False}
    prompt = model.tokenizer.encode(SYSTEM + TURNS[3])
    cache = PrefixCache(64 * 2**20)
    (first,) = run_scheduler(model, [prompt], [kw], cache, defer=True)
    (entry,) = cache.entries.values()
    block = next(iter(entry.kv.values())).base
    for _ in range(3):
        assert entry.owner is not None
        (again,) = run_scheduler(model, [prompt], [kw], cache, defer=True)
        assert again.new_ids == first.new_ids and list(cache.entries.values()) == [entry]
        assert next(iter(entry.kv.values())).base is block
    assert entry.owner is not None and cache.reused_tokens == 3 * len(prompt)


def test_an_entry_is_lent_only_for_half_of_it_or_more():
    """``lend`` hands over an entry's state only where the borrower reuses at least half of its positions: a prompt
    sharing a BOS (or a short system prompt) with a long conversation's entry copies those few positions, and the
    entry stays whole for that conversation's next turn; the next turn itself, or the same prompt again, borrows."""
    class Owner:
        def rollback(self, counts):
            self.counts = list(counts)

    cache, owner = PrefixCache(10**6), Owner()
    cache.put(list(range(1, 28)), _kv(27), owner=owner)
    (entry,) = cache.entries.values()
    assert cache.lend(entry, 1) is None and cache.lend(entry, 13) is None
    assert entry.owner is owner and len(entry.ids) == 27  # whole, still lendable
    assert cache.lend(entry, 14) is owner and owner.counts == [13] and len(entry.ids) == 14


def test_requests_admitted_together_on_one_lendable_entry_copy_it(fused_llama_dir):
    """Two requests admitted in one step resume from the same entry, which a lone request's dropped state backs: the
    entry is not lent (lending cuts it to one request's positions, which the other still needs); both copy and
    answer as a cold scheduler."""
    model = onnxlm.load(fused_llama_dir)
    kw = {"max_new_tokens": 4, "eos_token_id": None, "do_sample": False}
    prompt = model.tokenizer.encode(SYSTEM + TURNS[1])
    cache = PrefixCache(64 * 2**20)
    run_scheduler(model, [prompt], [kw], cache, defer=True)
    (entry,) = cache.entries.values()
    assert entry.owner is not None
    prompts = [prompt[:-3] + prompt[-2:], prompt]  # resumes 3 positions fewer; then all of them (cached logits)
    warm = run_scheduler(model, prompts, [kw, kw], cache, defer=True)
    cold = run_scheduler(model, prompts, [kw, kw])
    assert [r.new_ids for r in warm] == [r.new_ids for r in cold] and all(r.error is None for r in warm)


def test_a_request_of_two_samples_finishing_at_once_lends_nothing_stale(fused_llama_dir):
    """A request with num_return_sequences=2 answered in one token: its prompt's state was resized to two rows
    (``select``) after its snapshot was marked, so the entry keeps the views but no state to lend; the next request
    on that prompt answers as a cold scheduler."""
    model = onnxlm.load(fused_llama_dir)
    prompt = model.tokenizer.encode(SYSTEM + TURNS[2])
    two = {"max_new_tokens": 1, "eos_token_id": None, "do_sample": True, "seed": 2, "num_return_sequences": 2}
    cache = PrefixCache(64 * 2**20)
    run_scheduler(model, [prompt], [two], cache, defer=True)
    (entry,) = cache.entries.values()
    assert entry.owner is None
    kw = {"max_new_tokens": 5, "eos_token_id": None, "do_sample": False}
    (warm,) = run_scheduler(model, [prompt], [kw], cache, defer=True)
    (cold,) = run_scheduler(model, [prompt], [kw])
    assert warm.new_ids == cold.new_ids


# ---------------------------------------------------------------------------------------------------- the budget
def test_a_put_checks_its_size_before_dropping_anything_and_never_evicts_itself():
    """Views of a buffer block count the whole block: where that does not fit beside the entries that stay, the
    held positions are copied (no state to lend); the logits merged from superseded entries count before they are
    dropped (those that do not fit go, the prompt's kept first), an entry that cannot fit leaves the cache as it
    was, and the cache's byte count is always its entries' sizes, within the budget."""
    logits = np.ones(64, np.float32)  # 256 bytes
    block = np.zeros((1, 64, 16), np.float32)  # 64 positions of 64 bytes: 4096 bytes

    def check(cache):
        assert cache.bytes == sum(e.nbytes for e in cache.entries.values()) <= cache.max_bytes

    cache = PrefixCache(1500)  # a copy fits, the block does not
    cache.put([1, 2, 3], _kv(3), logits)
    cache.put([1, 2, 3, 4, 5, 6], {"k": block[:, :6]}, logits, owner=object())
    (entry,) = cache.entries.values()
    assert list(entry.ids) == [1, 2, 3, 4, 5, 6] and entry.owner is None and sorted(entry.logits) == [3, 6]
    assert entry.kv["k"].base is None and np.array_equal(entry.kv["k"], block[:, :6])
    check(cache)

    cache = PrefixCache(900)  # the copy fits with one of the two logits: the prompt's (first=3) stay
    cache.put([1, 2, 3], _kv(3), logits)
    cache.put([1, 2, 3, 4, 5, 6], _kv(6), logits, first=3)
    (entry,) = cache.entries.values()
    assert len(entry.ids) == 6 and sorted(entry.logits) == [3]
    check(cache)
    cache.put([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], _kv(13))  # 936 bytes without logits: not kept
    assert [len(e.ids) for e in cache.entries.values()] == [6]
    check(cache)
    cache.attach_logits([1, 2, 3, 4], logits)  # the entry would pass the budget alone: not attached
    assert sorted(entry.logits) == [3] and list(cache.entries.values()) == [entry]
    check(cache)

    cache = PrefixCache(5000)  # the block fits alone, not beside [1..6]: a copy, and [1..6] stays
    cache.put([1, 2, 3, 4, 5, 6], _kv(6), logits)
    cache.put([7, 8, 9], {"k": block[:, :3]}, logits, owner=object())
    assert [len(e.ids) for e in cache.entries.values()] == [6, 3]
    assert all(e.kv["k"].base is None and e.owner is None for e in cache.entries.values())
    check(cache)
    cache.put([5, 5], {"k": block[:, :2]}, logits, owner=object())  # a copy fits beside: nothing is evicted
    assert len(cache.entries) == 3
    check(cache)


@pytest.mark.parametrize("room", ["below_block", "block_not_its_logits", "block_then_copies"])
def test_a_lone_clients_chat_is_cached_under_a_budget_below_its_buffer_block(fused_llama_dir, room):
    """A lone client's finished answer keeps its state's buffer block only where the whole block fits with the
    entry's logits: under a budget below the block, below the block with the logits it takes over from its prompt's
    entry, or one that holds them at the first turn only (the entry then grows by the logits of later prompts), the
    answer's held positions are copied instead. The same prompt sent again reuses all of its positions, the
    next turn all but the answer's last token, the cache stays within its budget and counts its entries' real
    sizes, and every answer equals a cold scheduler's."""
    model = onnxlm.load(fused_llama_dir)
    kw = {"max_new_tokens": 4, "eos_token_id": None, "do_sample": False}
    first = model.tokenizer.encode(SYSTEM + TURNS[0])
    probe = PrefixCache(64 * 2**20)
    run_scheduler(model, [first], [kw], probe, defer=True)
    (views,) = probe.entries.values()  # the block, the ids and two logits (the prompt's and the answer's)
    assert views.owner is not None
    copy = sum(np.array(a).nbytes for a in views.kv.values()) + views.ids.nbytes
    logit = next(iter(views.logits.values())).nbytes
    block = next(iter(views.kv.values())).base.nbytes
    budget = {"below_block": block - 1, "block_not_its_logits": views.nbytes - 1,
              "block_then_copies": views.nbytes + logit // 2}[room]
    assert 2 * (copy + 4 * logit) < budget  # the copies of two turns with their logits fit

    def check():
        assert cache.bytes == sum(e.nbytes for e in cache.entries.values()) <= budget

    cache = PrefixCache(budget)
    (one,) = run_scheduler(model, [first], [kw], cache, defer=True)
    check()
    assert [len(e.ids) for e in cache.entries.values()] == [len(first) + 3]
    second = first + one.new_ids[0] + model.tokenizer.encode(" " + TURNS[1], add_special_tokens=False)
    for ids, reused in [(first, len(first)), (second, len(first) + 3), (second, len(second))]:
        before = cache.reused_tokens
        (warm,) = run_scheduler(model, [ids], [kw], cache, defer=True)
        (cold,) = run_scheduler(model, [ids], [kw])
        assert warm.new_ids == cold.new_ids
        assert cache.reused_tokens - before == reused
        check()
        assert any(len(e.ids) == len(ids) + 3 for e in cache.entries.values())
    assert all(a.base is None for e in cache.entries.values() for a in e.kv.values())  # copies
