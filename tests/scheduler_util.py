"""Helper of the scheduler tests: drive a Scheduler over prompts to the end, as the server's engine does."""
from __future__ import annotations

from onnxlm.runtime.decoding.scheduler import Request, Scheduler


def run_scheduler(model, prompts, params, cache=None, join_at=None, defer=False) -> list[Request]:
    """Drive a scheduler over ``prompts`` with ``params`` (one generation-parameter dict each), joining at steps
    ``join_at`` (default: all at once), with the prefix cache ``cache``; ``defer``: as the server's engine does, each
    step's prefix-cache copies are stored after the step has returned its tokens -> the finished requests (each
    checked to have finished without an error)."""
    sched = Scheduler(model, max_rows=8, prefix_cache=cache)
    reqs = [Request(list(p), model.resolve_config(kw)) for p, kw in zip(prompts, params)]
    step, pending = 0, list(zip(join_at or [0] * len(reqs), reqs))
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
