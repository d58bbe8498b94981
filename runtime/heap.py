"""glibc's malloc while onnxruntime builds a session, so that the weights it frees after prepacking leave the process.

onnxruntime prepacks every constant MatMul/Gemm weight into MLAS's packed layout (the fast one) and then frees the
original initializer when no other kernel reads it (``SessionState::PrepackConstantInitializedTensors``). glibc's
malloc does not give those pages back: its mmap threshold is dynamic, raised to the size of each mapped block that is
freed (up to 32 MiB), so after the first weights are freed the rest are allocated on the brk heap, and free() keeps
heap pages for reuse. The process then held both copies: SmolLM2-135M fp32 961 MB resident after load for 540 MB of
weights, 659 MB with this module (`python -m benchmarks.memory`).

`session_heap()` wraps building a session: it fixes glibc's M_MMAP_THRESHOLD at 64 KiB (every larger block is its
own mapping, unmapped by free) and, when the last build in progress ends, at 32 MiB: the ceiling the dynamic threshold
reaches anyway, so decoding's per-step arrays keep reusing heap pages as before instead of mapping fresh zeroed ones
(64 KiB kept for decoding too lowered the peak a little more, but SmolLM2 batch 8 then took ~1600 page faults and
~4-5 ms of system time per token, against ~100 and ~0.3 ms at 32 MiB, as without this module).
Setting it also turns glibc's dynamic adjustment off for the process, and with it the trim threshold's: glibc would
then give back every free stretch over 128 KiB at the top of the heap, so each request's fresh KV buffers were faulted in
page by page again (resuming 779 cached SmolLM2 positions: 54 ms, of which 25 ms the one-token pass and ~25 ms page
faults). After the last build M_TRIM_THRESHOLD is therefore raised to 128 MiB (the dynamic threshold's own habit is
twice the mmap threshold; 128 MiB holds a 2,500-token SmolLM2 row's buffers), and lowered to glibc's default again
while a session is built. Only on glibc (Linux); elsewhere, and with ``ONNXLM_MALLOC_TUNING=0``, malloc is left
alone.

`release_free_heap()` hands every free heap page back at once (``malloc_trim(0)``): a model calls it after reading
its tokenizer and after building its sessions. Parsing a large tokenizer.json leaves most of what the parse allocated
free but resident in the middle of the heap (Gemma 3's: 290 MB resident after loading, 97 MB after the trim).
"""
from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from functools import lru_cache

from .errors import ParameterError

ENV_VAR = "ONNXLM_MALLOC_TUNING"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
BUILD_THRESHOLD = 64 << 10  # while a session is built: each block above 64 KiB is its own mapping
RUN_THRESHOLD = 32 << 20  # afterwards: glibc's DEFAULT_MMAP_THRESHOLD_MAX, where the dynamic threshold ends up
BUILD_TRIM = 128 << 10  # while a session is built: glibc's default trim threshold
RUN_TRIM = 128 << 20  # afterwards: free heap top kept up to 128 MiB, so decoding's buffers reuse resident pages

_lock = threading.Lock()
_building = 0  # sessions being built right now (several threads may load models at once)


@lru_cache(maxsize=1)
def glibc():
    """The process's C library when it is glibc (ctypes.CDLL), else None (musl, macOS, Windows)."""
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (AttributeError, ValueError, OSError):
        return None


def tuning_enabled() -> bool:
    """ONNXLM_MALLOC_TUNING unset or '1' -> True, '0' -> False; anything else raises ParameterError."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value not in ("", "0", "1"):
        raise ParameterError(ENV_VAR, f"got {value!r}; allowed: '1' (default: tune glibc's malloc while a session "
                                      "is built) or '0' (leave malloc alone)")
    return value != "0"


@contextmanager
def session_heap():
    """Context for building one onnxruntime session (see the module docstring)."""
    global _building
    libc = glibc() if tuning_enabled() else None
    if libc is None:
        yield
        return
    with _lock:
        _building += 1
        libc.mallopt(M_TRIM_THRESHOLD, BUILD_TRIM)
        libc.mallopt(M_MMAP_THRESHOLD, BUILD_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _building -= 1
            if _building == 0:
                libc.mallopt(M_TRIM_THRESHOLD, RUN_TRIM)
                libc.mallopt(M_MMAP_THRESHOLD, RUN_THRESHOLD)


def release_free_heap() -> None:
    """Give the free pages of every malloc arena back to the kernel (glibc's ``malloc_trim(0)``; a no-op elsewhere
    or with ``ONNXLM_MALLOC_TUNING=0``)."""
    libc = glibc() if tuning_enabled() else None
    if libc is not None:
        libc.malloc_trim(0)
