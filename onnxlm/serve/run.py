"""A request's run on the engine thread: admission (a slot, then the jobs sent), relaying what the engine gives back
through one asyncio queue, cancelling the rows of a client that goes away, and gathering a non-streaming answer."""
from __future__ import annotations

import asyncio
import threading

from starlette.requests import Request as HTTPRequest

from .choices import REASONS, Choices
from .engine import cancelled_by
from .errors import model_error
from .jobs import Job, prompt_logprobs
from .state import ServeState, Slot, state_of


class Run:
    """Sends a request's jobs to the engine and gathers what comes back (one asyncio queue for all of them)."""

    def __init__(self, st: ServeState, jobs: list[Job], n: int, echo_logprobs: int | None, stream: bool = True):
        self.st, self.jobs, self.n = st, jobs, n
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue = asyncio.Queue()
        self.pending = 0
        self.gone = threading.Event()  # the client went away: the engine skips or stops this run's calls
        self.stream = stream
        self.after_echo: set[int] = set()  # jobs whose generation starts once their prompt's log-probs are in
        for i, job in enumerate(jobs):
            if echo_logprobs is not None:  # the prompt's pass runs in parts between decoding steps (engine.py)
                st.engine.call(prompt_logprobs(job.ids, echo_logprobs), self.loop, self.out, ("echo", i), self.gone)
                self.pending += 1
            if job.req is not None or job.beam_params is not None:
                self.pending += 1
                if echo_logprobs is not None:  # after its echo: a stream sends the prompt before the completion
                    self.after_echo.add(i)
                else:
                    self._generate(i, job)

    def _generate(self, i: int, job: Job) -> None:
        """Hand job i's generation to the engine: a scheduler request, or a beam search as a call."""
        if job.req is not None:
            self.st.engine.submit(job.req, self.loop, self.out, ("gen", i), stream=self.stream)
        else:
            params, stop = job.beam_params, cancelled_by(self.gone)
            self.st.engine.call(lambda m, ids=job.ids, p=params: m.generate([ids], stopping_criteria=stop, **p),
                                self.loop, self.out, ("beam", i), self.gone)

    def cancel(self) -> None:
        self.gone.set()
        for job in self.jobs:
            if job.req is not None and not job.req.done:
                self.st.engine.cancel(job.req)

    async def items(self):
        """Yield (kind, job index, payload) until every job is done; an error raises APIError."""
        while self.pending:
            (kind, i), what, payload = await self.out.get()
            if what == "error":
                self.cancel()
                error = model_error(payload)
                if error.status >= 500:  # the metric counts the server's failures, not a user's mistake (a 400)
                    self.st.count("errors")
                raise error
            if what in ("done", "result"):
                self.pending -= 1
            if kind == "echo" and i in self.after_echo:
                self.after_echo.discard(i)
                self._generate(i, self.jobs[i])
            yield kind, i, what, payload


def admit(st, jobs: list[Job], n: int, echo_logprobs, *, stream: bool = True) -> tuple[Slot, Run]:
    """Take a slot and start the request's run -> (slot, run); the slot is given back if the run cannot start.
    ``stream=False``: the engine hands a request's tokens over once, when it is done."""
    slot = Slot(st, rows=len(jobs) * n)
    try:
        run = Run(st, jobs, n, echo_logprobs, stream)
        st.count("prompt_tokens", sum(len(j.ids) for j in jobs))
        return slot, run
    except BaseException:
        slot.release()
        raise


async def until_done_or_gone(request: HTTPRequest, run: Run, consume):
    """Run ``consume()`` (a coroutine) while watching for the client going away (non-streaming requests)."""
    task = asyncio.ensure_future(consume())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                return task.result()
            if await request.is_disconnected():
                run.cancel()
                state_of(request).count("cancelled")
                task.cancel()
                return None
    finally:
        if not task.done():
            task.cancel()


async def collect(request: HTTPRequest, run: Run, slot: Slot, choices: Choices, jobs: list[Job]):
    """A non-streaming request's whole output ({"texts": ...}, None when the client went away); frees the slot."""
    try:
        return await until_done_or_gone(request, run, lambda: _gather(run, choices, jobs))
    finally:
        slot.release()


async def _gather(run: Run, choices: Choices, jobs: list[Job]) -> dict:
    """Collect a non-streaming request's output -> {"texts": {index: final text}}."""
    texts = {}
    async for kind, i, what, payload in run.items():
        if what == "events":
            choices.add_events(i, payload)
        elif kind == "echo":
            jobs[i].prompt_logprobs = payload
        elif kind == "beam":
            for j, (text, new, reason) in enumerate(zip(payload.text, payload.new_tokens, payload.finish_reasons)):
                index = i * run.n + j
                texts[index], choices.reasons[index] = text, REASONS[reason]
                choices.tokens[index] = [(t, None, None) for t in new]
                choices.completion_tokens += len(new)
        elif what == "done" and payload is not None:
            for j, text in enumerate(payload.final_text):
                texts[i * run.n + j] = text
    return {"texts": texts}
