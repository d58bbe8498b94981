"""runtime/heap.py: glibc's mmap threshold is low while onnxruntime builds a session (so the weights it frees after
prepacking leave the process) and high afterwards; logits are identical with and without it."""
import numpy as np
import onnxruntime as ort
import pytest

import onnxlm
from onnxlm.runtime import heap
from onnxlm.runtime.errors import ParameterError


class FakeLibc:
    """Records mallopt(param, value) calls."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1

    def mallopts(self):
        return [c for c in self.calls if c[0] != "trim"]


@pytest.fixture
def fake_libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: fake)
    monkeypatch.delenv(heap.ENV_VAR, raising=False)
    return fake


def test_threshold_is_low_while_a_session_is_built_and_high_after(monkeypatch, fake_libc, tiny_llama):
    during = []
    real = ort.InferenceSession

    def spy(*args, **kwargs):  # the threshold in force while onnxruntime loads and prepacks
        during.append(fake_libc.calls[-1] if fake_libc.calls else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    onnxlm.load(tiny_llama.onnx_dir, provider="cpu")
    assert during and all(call == (heap.M_MMAP_THRESHOLD, heap.BUILD_THRESHOLD) for call in during)
    assert fake_libc.mallopts()[-2:] == [(heap.M_TRIM_THRESHOLD, heap.RUN_TRIM),
                                         (heap.M_MMAP_THRESHOLD, heap.RUN_THRESHOLD)]
    assert (heap.M_TRIM_THRESHOLD, heap.BUILD_TRIM) in fake_libc.calls  # glibc's default trim while building


def test_free_heap_is_released_after_the_tokenizer_and_after_the_sessions(fake_libc, tiny_llama):
    """malloc_trim(0) once the tokenizer is read (before any session is built: a big tokenizer.json's parse leaves
    its memory free but resident) and once the sessions are built."""
    onnxlm.load(tiny_llama.onnx_dir, provider="cpu")
    trims = [i for i, c in enumerate(fake_libc.calls) if c == ("trim", 0)]
    builds = [i for i, c in enumerate(fake_libc.calls) if c == (heap.M_MMAP_THRESHOLD, heap.BUILD_THRESHOLD)]
    assert len(trims) == 2 and trims[0] < builds[0] and trims[1] > builds[-1], fake_libc.calls


def test_overlapping_builds_raise_the_threshold_once_the_last_ends(fake_libc):
    with heap.session_heap():
        with heap.session_heap():
            pass
        assert fake_libc.calls[-1] == (heap.M_MMAP_THRESHOLD, heap.BUILD_THRESHOLD)  # one build still running
        assert (heap.M_TRIM_THRESHOLD, heap.RUN_TRIM) not in fake_libc.calls
    assert fake_libc.calls[-2:] == [(heap.M_TRIM_THRESHOLD, heap.RUN_TRIM), (heap.M_MMAP_THRESHOLD, heap.RUN_THRESHOLD)]


def test_env_zero_leaves_malloc_alone_and_bad_values_raise(monkeypatch, fake_libc, tiny_llama):
    monkeypatch.setenv(heap.ENV_VAR, "0")
    onnxlm.load(tiny_llama.onnx_dir, provider="cpu")
    assert fake_libc.calls == []
    monkeypatch.setenv(heap.ENV_VAR, "yes")
    with pytest.raises(ParameterError, match=heap.ENV_VAR):
        onnxlm.load(tiny_llama.onnx_dir, provider="cpu")


def test_logits_identical_with_and_without_tuning(monkeypatch, tiny_llama, tiny_gpt2):
    # the real C library here (glibc on Linux CI): only where memory comes from changes, never a value
    ids = np.array([[5, 17, 42, 7, 99, 3]], dtype=np.int64)
    for tiny in (tiny_llama, tiny_gpt2):
        monkeypatch.setenv(heap.ENV_VAR, "0")
        plain = onnxlm.load(tiny.onnx_dir, provider="cpu").logits(ids)
        monkeypatch.setenv(heap.ENV_VAR, "1")
        tuned = onnxlm.load(tiny.onnx_dir, provider="cpu").logits(ids)
        np.testing.assert_array_equal(tuned, plain)


@pytest.mark.skipif(heap.glibc() is None, reason="glibc's malloc only (the tuning is a no-op elsewhere)")
def test_buffers_freed_after_a_request_stay_resident_for_the_next(monkeypatch, tiny_llama):
    """A request's KV buffers (here 60 blocks of 768 KiB, SmolLM2's ~1,000-position layout) freed at the end of the
    request stay resident heap for the next one: with glibc's default trim threshold the free heap top went back to
    the kernel (RSS dropped by the ~47 MB) and the next request faulted every page in again (~25 ms)."""
    monkeypatch.delenv(heap.ENV_VAR, raising=False)
    onnxlm.load(tiny_llama.onnx_dir, provider="cpu")  # leaves the run-time thresholds set

    def rss_mib() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS in /proc/self/status")

    heap.glibc().malloc_trim(0)  # earlier tests' free heap back to the kernel: the blocks extend the heap's top
    blocks = [np.ones((3, 1024, 64), np.float32) for _ in range(60)]  # written: resident
    held = rss_mib()
    del blocks
    dropped = held - rss_mib()
    assert dropped < 10, f"{dropped:.1f} MiB of freed request buffers left the process"
    assert heap.glibc().malloc_trim(0) and held - rss_mib() > 30  # they were resident heap, and trim frees them
