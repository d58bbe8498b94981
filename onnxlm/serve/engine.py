"""The engine thread: the one owner of the model and of the continuous-batching scheduler.

The event loop never runs the model. Handlers hand the engine a scheduler ``Request`` (``submit``) or a function
of the model (``call``: beam search, prompt scoring for ``echo``), and receive what it produces through an
``asyncio.Queue`` fed with ``loop.call_soon_threadsafe``. Between decoding steps the engine takes new work, so new
requests join the running batch at the next step, and cancelled ones leave it at the next step. A call whose
function returns a generator runs in parts: one part (up to its next ``yield``) after each decoding step, the
calls in turn, its result the generator's return value; between parts it is dropped once its client went away.

A forward pass that raises (an onnxruntime failure) fails the requests of the batch it ran for (their state is
unusable) and nothing else: the engine goes on with the requests still waiting and with new ones.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import queue
import threading
from typing import Callable

from onnxlm.runtime.decoding.scheduler import Request, Scheduler
from onnxlm.runtime.decoding.scheduler_draft import ServerDraft
from onnxlm.runtime.prefix_cache import PrefixCache

from .errors import users_mistake

log = logging.getLogger("onnxlm.serve")


def _log_failure(what: str, exc: BaseException) -> None:
    """A request's failure in the engine: an ERROR with its traceback when the server failed, one INFO line when the
    request was wrong (the client gets its 400; an operator's error log is no place for it)."""
    if users_mistake(exc):
        log.info("%s: the request was refused: %s", what, exc)
    else:
        log.error("%s: %s", what, exc, exc_info=exc)


class CallCancelled(Exception):
    """A call whose client went away, skipped or stopped between two decoding steps."""


def cancelled_by(gone: threading.Event):
    """A ``stopping_criteria`` for ``generate`` that abandons the call (raises ``CallCancelled``) once ``gone`` is
    set: a beam search or a speculative run stops at its next step instead of decoding for nobody."""
    def check(ids, scores):
        if gone.is_set():
            raise CallCancelled()
        return False
    return check


def _speculation_metrics(counts) -> dict:
    """The scheduler's speculative passes (a SpeculationStats) -> /metrics' fields; none before the model loads."""
    if counts is None:
        return {}
    return {"speculative_passes": counts.passes, "speculative_proposed_tokens": counts.proposed,
            "speculative_accepted_tokens": counts.accepted}


class Engine:
    """Loads the model in its thread (``ready`` is set after), then runs submitted work until ``stop``."""

    def __init__(self, loader: Callable[[], object], *, max_rows: int = 32, prefix_cache_mb: int = 0,
                 kv_pool_mb: int = 0, prompt_lookup: int = 0, prefill_chunk: int = 0,
                 draft_loader: Callable[[], object] | None = None, draft_settings: dict | None = None):
        self.loader, self.max_rows, self.kv_pool_bytes = loader, max_rows, int(kv_pool_mb) * 2**20
        self.prompt_lookup = prompt_lookup  # a lone request's speculation (runtime/decoding/scheduler_speculation.py)
        # or a draft model's (scheduler_draft.py): loaded after the model, on this thread; ServerDraft's settings
        self.draft_loader, self.draft_settings, self.draft = draft_loader, dict(draft_settings or {}), None
        self.prefill_chunk = prefill_chunk  # a long prompt's part per step while rows decode (scheduler_prefill.py)
        self.kv_pool = None  # the model's BufferPool once loaded (fused layout only)
        self.prefix_cache = PrefixCache(int(prefix_cache_mb) * 2**20)  # off at 0
        self.inbox: queue.Queue = queue.Queue()
        self.model = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.loading = "model"  # what the engine thread is loading ("model", then "draft"): a load error's part
        self.scheduler: Scheduler | None = None
        self._sinks: dict[int, Callable] = {}
        self._task_ids: dict[int, int] = {}  # id(request) -> its task number (/slots' id_task), while it runs
        self._next_task = itertools.count()
        self._calls: collections.deque = collections.deque()  # (generator, gone, sink) of calls run in parts
        self._stopping = False
        self.in_call = False  # the engine thread is inside a call (the batch stands still meanwhile)
        self.steps = 0
        self.generated = 0  # tokens generated: every scheduler event, and the new tokens of every call's result
        self.thread = threading.Thread(target=self._main, name="onnxlm-engine", daemon=True)

    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self.inbox.put(None)
        self.thread.join(timeout)

    # ------------------------------------------------------------------ called from the event loop
    def submit(self, req: Request, loop: asyncio.AbstractEventLoop, out: asyncio.Queue, tag=None, *,
               stream: bool = True) -> None:
        """Queue a scheduler request; (tag, kind, payload) items arrive on ``out``: ("events", [TokenEvent]),
        then ("done", req) (payload None: cancelled) or ("error", exc). ``stream=False`` (a non-streaming answer):
        the events are held back and arrive together just before "done", so the event loop is not woken every
        step while the engine decodes."""
        sink = _sink(loop, out, tag)
        self.inbox.put(("request", req, sink if stream else _held_back(sink)))

    def call(self, fn: Callable, loop: asyncio.AbstractEventLoop, out: asyncio.Queue, tag=None,
             gone: threading.Event | None = None) -> None:
        """Run fn(model) on the engine thread between steps; (tag, "result", value) or (tag, "error", exc) arrives
        on ``out``. ``gone`` set (its client went away): a call not yet started is skipped; a running one stops
        where ``fn`` asks ``stopping_criteria=cancelled_by(gone)``."""
        self.inbox.put(("call", (fn, gone), _sink(loop, out, tag)))

    def cancel(self, req: Request) -> None:
        """The request's rows leave the batch at the next step (its client went away)."""
        req.cancelled = True
        self.inbox.put(None)  # wake an idle engine

    def rows_now(self) -> list[tuple[int, object, int, int, int, bool]]:
        """The batch's rows, in state order -> (task number, request, row within it, tokens made, tokens it may still
        make, whether it speculates while alone). Runs on the engine thread (send it as a ``call``): a snapshot
        between two steps."""
        if self.scheduler is None:
            return []
        return [(self._task_ids.get(id(req), -1), req, r, made, left, spec)
                for req, r, made, left, spec in self.scheduler.row_progress()]

    def stats(self) -> dict:
        s = self.scheduler
        return {"running_rows": len(s.rows) if s else 0, "waiting_requests": len(s.waiting) if s else 0,
                "steps": self.steps, "completion_tokens": self.generated, **self.prefix_cache.stats(),
                "prefilling_requests": len(s.prefilling) if s else 0, "prefill_parts": s.prefill_parts if s else 0,
                **_speculation_metrics(s.speculation if s else None),
                **(self.kv_pool.stats() if self.kv_pool else {})}

    # ------------------------------------------------------------------ the engine thread
    def _main(self) -> None:
        try:
            self.model = self.loader()
            if hasattr(self.model, "keep_kv_buffers"):  # fused layout: freed KV buffers stay resident for reuse
                self.kv_pool = self.model.keep_kv_buffers(self.kv_pool_bytes)
            if self.draft_loader is not None:  # its vocabulary checked against the model's (a ParameterError)
                self.loading = "draft"
                self.draft = ServerDraft(self.draft_loader(), self.model, **self.draft_settings)
                short = self.draft.shorter_context()
                if short:
                    log.warning(short)
            self.loading = None
            self.scheduler = Scheduler(self.model, max_rows=self.max_rows,
                                       prefix_cache=self.prefix_cache if self.prefix_cache.enabled else None,
                                       prompt_lookup=self.prompt_lookup, prefill_chunk=self.prefill_chunk,
                                       draft=self.draft)
            if self.prefix_cache.enabled and self.scheduler.prefix_cache is None:
                log.info("the prefix cache is off: this model cannot resume from a cached prefix (an encoder-decoder "
                         "model)")
        except BaseException as exc:  # noqa: BLE001 - reported through /health and the CLI
            self.load_error = exc
            log.error("loading the model failed: %s", exc)
            return
        finally:
            self.ready.set()
        while not self._stopping:
            self._take_work(block=not (self.scheduler.busy or self._calls))
            if self.scheduler.busy:
                self._step()
            if self._calls:
                self._call_part()

    def _take_work(self, block: bool) -> None:
        """Move inbox items into the scheduler (or run calls); wait for one when idle."""
        try:
            item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None or not self.inbox.empty():
            if item is not None:
                self._take(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break

    def _take(self, item) -> None:
        kind, what, sink = item
        if kind == "call":
            fn, gone = what
            try:
                if gone is not None and gone.is_set():
                    raise CallCancelled()
                result = self._inside_call(fn, self.model)
                if inspect.isgenerator(result):  # run in parts between steps (_call_part)
                    self._calls.append((result, gone, sink))
                    return
                self.generated += sum(len(t) for t in getattr(result, "new_tokens", None) or [])  # beam, lookup
                sink(("result", result))
            except CallCancelled as exc:  # nobody waits for it
                sink(("error", exc))
            except Exception as exc:  # noqa: BLE001 - handed to the request's handler
                _log_failure("engine call failed", exc)
                sink(("error", exc))
            return
        if what.cancelled:
            sink(("done", what))
            return
        try:
            self.scheduler.add(what)
        except Exception as exc:  # noqa: BLE001 - checked by the handler first; anything left is its error
            sink(("error", exc))
            return
        self._sinks[id(what)] = sink
        self._task_ids[id(what)] = next(self._next_task)

    def _inside_call(self, fn, arg):
        """fn(arg) with ``in_call`` set: a reader that must not wait for a call (/slots) may read the batch, which
        no step changes meanwhile."""
        self.in_call = True
        try:
            return fn(arg)
        finally:
            self.in_call = False

    def _call_part(self) -> None:
        """Run the next part of the first call in parts, then let the next one have its turn; a finished one hands
        its return value over, one whose client went away is closed."""
        gen, gone, sink = self._calls.popleft()
        if gone is not None and gone.is_set():
            gen.close()
            sink(("error", CallCancelled()))
            return
        try:
            self._inside_call(next, gen)
        except StopIteration as done:
            sink(("result", done.value))
            return
        except Exception as exc:  # noqa: BLE001 - handed to the request's handler
            _log_failure("engine call failed", exc)
            sink(("error", exc))
            return
        self._calls.append((gen, gone, sink))

    def _step(self) -> None:
        sched = self.scheduler
        try:
            produced = sched.step(defer_snapshots=True)  # tokens out first, the cache's copies after
        except Exception as exc:  # noqa: BLE001 - e.g. onnxruntime failing mid-decode
            log.exception("a decoding step failed; failing the %d requests of the batch", len(sched.requests))
            for req in sched.abort_all():
                self._finish(req, ("error", exc))
            return
        finally:
            self.steps += 1
        for req in sched.failed:
            _log_failure("prefill failed", req.error)
            self._finish(req, ("error", req.error))
        sched.failed.clear()
        for req, events in produced:
            self.generated += len(events)  # counted as made, whether or not their client is still there
            sink = self._sinks.get(id(req))
            if sink is not None and events:
                sink(("events", events))
            if req.done:
                self._finish(req, ("done", req))
        self._forget_cancelled()
        sched.store_snapshots()  # the prefix cache's copies, now that the tokens are on their way

    def _forget_cancelled(self) -> None:
        """Cancelled requests that left (queue or batch) get their final message and are forgotten."""
        live = {id(r) for r in self.scheduler.held}
        for key in [k for k in self._sinks if k not in live]:
            self._task_ids.pop(key, None)
            self._sinks.pop(key)(("done", None))

    def _finish(self, req: Request, message) -> None:
        self._task_ids.pop(id(req), None)
        sink = self._sinks.pop(id(req), None)
        if sink is not None:
            sink(message)


def _sink(loop: asyncio.AbstractEventLoop, out: asyncio.Queue, tag) -> Callable:
    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(out.put_nowait, (tag, *item))
        except RuntimeError:  # the loop is closed (server shutting down): nobody listens any more
            pass
    return put


def _held_back(sink: Callable) -> Callable:
    """A sink that holds ("events", ...) items back and hands them over in one item before whatever comes next."""
    held: list = []

    def put(item) -> None:
        if item[0] == "events":
            held.extend(item[1])
            return
        if held:
            sink(("events", list(held)))
            held.clear()
        sink(item)
    return put
