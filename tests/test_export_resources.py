"""A GGUF file's first run is refused at once when this machine lacks the memory or disk its fp32 export needs at
the least (export/export_resources.py), instead of being killed minutes later."""
from __future__ import annotations

import pytest

from onnxlm.export import export_resources as R
from onnxlm.runtime.errors import ExportError

MEMINFO = "MemTotal:       32000000 kB\nMemAvailable:   20000000 kB\nSwapFree:        1000000 kB\nHugePages_Total: 0\n"


def test_available_memory_is_memavailable_and_swap_capped_by_a_containers_limit(tmp_path):
    none = tmp_path / "no-cgroup"
    assert R.available_memory(MEMINFO, str(none)) == 21_000_000 * 1024
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("8000000000\n")
    (v2 / "memory.current").write_text("3000000000\n")
    assert R.available_memory(MEMINFO, str(v2)) == 5_000_000_000
    # page cache the kernel reclaims on demand (a GGUF just downloaded) is not used memory
    (v2 / "memory.stat").write_text("anon 1000000000\nfile 2000000000\ninactive_file 1500000000\n")
    assert R.available_memory(MEMINFO, str(v2)) == 6_500_000_000
    (v2 / "memory.stat").unlink()
    (v2 / "memory.max").write_text("max\n")  # no limit
    assert R.available_memory(MEMINFO, str(none)) == R.available_memory(MEMINFO, str(v2))
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(1 << 62))  # v1's "no limit"
    (v1 / "memory.usage_in_bytes").write_text("100")
    assert R.available_memory(MEMINFO, str(v1.parent)) == 21_000_000 * 1024
    (v1 / "memory.limit_in_bytes").write_text("1000")
    assert R.available_memory(MEMINFO, str(v1.parent)) == 900
    assert R.available_memory("no such fields\n", str(none)) is None  # not Linux: no check


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    monkeypatch.delenv(R.SKIP_ENV, raising=False)
    path = tmp_path / "model-8b.Q4_K_M.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 1000)
    return path


def test_too_little_memory_is_refused_with_the_figures_and_the_ways_out(gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(R, "available_memory", lambda: 16 * 10**9)
    monkeypatch.setattr(R, "free_disk", lambda p: 10**13)  # not the runner's own disk
    with pytest.raises(ExportError) as info:
        R.check_export_resources(gguf, 8_000_000_000, tmp_path / "cache" / "gguf" / "x")
    msg = str(info.value)
    assert msg.startswith("exporting model-8b.Q4_K_M.gguf goes through its fp32 model (8.00 B parameters), "
                          "which needs at least 37.25 GiB of memory; this machine has 14.90 GiB available")
    assert "onnxlm export model-8b.Q4_K_M.gguf DIR --quantize gguf" in msg and f"{R.SKIP_ENV}=1" in msg
    R.check_export_resources(gguf, 3_000_000_000, tmp_path)  # 15 GB: enough
    monkeypatch.setattr(R, "available_memory", lambda: None)  # the system does not say
    R.check_export_resources(gguf, 8_000_000_000, tmp_path)
    monkeypatch.setattr(R, "available_memory", lambda: 1)
    monkeypatch.setenv(R.SKIP_ENV, "1")
    R.check_export_resources(gguf, 8_000_000_000, tmp_path)


def test_too_little_disk_where_the_artifact_goes_is_refused(gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(R, "available_memory", lambda: 10**12)
    seen = []
    monkeypatch.setattr(R, "free_disk", lambda p: seen.append(p) or 2 * 10**9)
    target = tmp_path / "cache" / "gguf" / "model"
    with pytest.raises(ExportError, match=r"needs at least 3\.73 GiB of disk in .*cache/gguf; it has 1\.86 GiB free: "
                                          r"free some, point \$ONNXLM_CACHE elsewhere, or export it on a larger"):
        R.check_export_resources(gguf, 1_000_000_000, target)
    assert seen == [target]
    with pytest.raises(ExportError, match=r"free some, write the artifact to another disk, or export it on a "
                                          r"larger machine and copy the artifact here, or set"):  # onnxlm export's
        R.check_export_resources(gguf, 1_000_000_000, target, in_cache=False)
    monkeypatch.setattr(R, "free_disk", lambda p: 3 * 2**20)  # a tiny disk: MiB, not "0.00 GiB"
    with pytest.raises(ExportError, match=r"needs at least \d+\.\d\d GiB of disk .*; it has 3\.00 MiB free"):
        R.check_export_resources(gguf, 1_000_000_000, target)
    monkeypatch.setattr(R, "free_disk", lambda p: 2 * 10**9)
    R.check_export_resources(gguf, 490_000_000, target)  # 1.96 GB + the file: fits
    with pytest.raises(ExportError, match=r"needs at least 1\.86 GiB of disk"):  # the fp32 artifact, then the file's
        R.check_export_resources(gguf, 499_999_900, target)  # 2e9 - 400 bytes + the file's 1004: 604 too many
    R.check_export_resources(gguf, 499_999_900, target, blocks_kept=False)  # the fp32 artifact alone fits
    assert R.free_disk(tmp_path / "not" / "made" / "yet") > 0  # the nearest existing parent's file system


def test_an_export_that_cannot_fit_stops_before_writing_anything(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gguf", reason="GGUF export needs the 'export' extra (gguf)")
    from onnxlm.export import gguf_artifact as GA
    from test_gguf_quant import write_tiny_gguf

    path, cache = tmp_path / "tiny-llama.gguf", tmp_path / "cache"
    write_tiny_gguf(path)
    monkeypatch.delenv(R.SKIP_ENV, raising=False)
    monkeypatch.setattr(R, "available_memory", lambda: 1000)

    def no_export(*a, **k):
        raise AssertionError("exported")

    with monkeypatch.context() as mp:
        mp.setattr("onnxlm.export.export.export_model", no_export)
        with pytest.raises(ExportError, match=r"^exporting tiny-llama\.gguf goes through its fp32 model"):
            GA.ensure_gguf_artifact(path, cache_dir=cache, progress=False)
    # `onnxlm export FILE DIR` as well: one error line, nothing written
    from onnxlm.cli import main

    assert main(["export", str(path), str(tmp_path / "out"), "--quantize", "gguf"]) == 1
    assert "onnxlm: error: exporting tiny-llama.gguf goes through its fp32 model" in capsys.readouterr().err
    # no DIR, and nothing in the cache (the check runs under the export's lock, which is gone again: a second run
    # must not be refused for the memory a first run's export holds while it waits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tiny-llama.gguf"]
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == ["gguf"]
