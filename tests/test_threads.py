"""Intra-op threads: threads= wins, then ONNXLM_THREADS, then the physical cores (not hyper-threads)."""
import pytest

import onnxlm
from onnxlm.runtime import threads as T
from onnxlm.runtime.errors import ParameterError

# two physical cores with two hyper-threads each (logical 0-3), one socket
CPUINFO_HT = "".join(f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\n\n" for cpu in range(4))


def test_physical_cores_counts_cores_not_hyperthreads(monkeypatch):
    monkeypatch.setattr(T, "usable_cpus", lambda: {0, 1, 2, 3})
    assert T.physical_cores(CPUINFO_HT) == 2
    monkeypatch.setattr(T, "usable_cpus", lambda: {0})  # affinity limits it
    assert T.physical_cores(CPUINFO_HT) == 1
    monkeypatch.setattr(T, "usable_cpus", lambda: {0, 1, 2})
    assert T.physical_cores("no such fields\n") == 3  # no topology: the usable logical CPUs


def test_resolution_order(monkeypatch):
    monkeypatch.delenv(T.ENV_VAR, raising=False)
    assert T.resolve_threads(None) == T.physical_cores()
    monkeypatch.setenv(T.ENV_VAR, "3")
    assert T.resolve_threads(None) == 3
    assert T.resolve_threads(1) == 1
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv(T.ENV_VAR, bad)
        with pytest.raises(ParameterError, match=T.ENV_VAR):
            T.resolve_threads(None)
    with pytest.raises(ParameterError, match="threads"):
        T.resolve_threads(0)


def test_sessions_get_the_resolved_count(monkeypatch, tiny_gpt2):
    monkeypatch.setenv(T.ENV_VAR, "1")
    model = onnxlm.load(tiny_gpt2.onnx_dir)
    opts = model.decoder.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    model = onnxlm.load(tiny_gpt2.onnx_dir, threads=2)
    assert model.decoder.session.get_session_options().intra_op_num_threads == 2
