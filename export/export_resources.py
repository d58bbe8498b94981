"""Whether this machine can export a GGUF file at all, asked before minutes of work end in the OOM killer.

A GGUF file's export (``onnxlm export``, or its first run through ``gguf_artifact``) goes through its dequantised
fp32 model: the loader holds it in
PyTorch, the validation in an onnxruntime session, and the fp32 graph is written to a scratch directory before its
blocks are rewritten. A 1.24 B-parameter file peaked at 6.6 GB of memory (docs/benchmarks.md, "Exporting a 1B-class
GGUF"), so an 8 B file needs ~40 GB of memory and ~37 GB of disk, where running its artifact needs about the file's
own size. The floors below are under what was measured, so a machine they refuse cannot do the export; one they
pass may still be short (a first run measures nothing): Gemma 3 270M's export peaked at 2.9 GB (11 bytes a
parameter: its 262,144 x 640 embedding and head dominate its reference logits and its graph), against the 1.25 GiB
floor. ``ONNXLM_SKIP_RESOURCE_CHECK=1`` tries anyway.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from onnxlm.runtime.errors import ExportError

from .gguf_splits import split_bytes

__all__ = ["MEMORY_BYTES_PER_PARAMETER", "DISK_BYTES_PER_PARAMETER", "SKIP_ENV", "available_memory", "free_disk",
           "export_needs", "check_export_resources", "check_gguf_export_resources"]

MEMORY_BYTES_PER_PARAMETER = 5  # the fp32 session's weights (4 B) beside what the loader left: 6.6 GB / 1.24 B = 5.3
DISK_BYTES_PER_PARAMETER = 4  # the fp32 scratch artifact, beside the artifact itself (about the file's size)
SKIP_ENV = "ONNXLM_SKIP_RESOURCE_CHECK"
_GB = 1e9  # parameters in billions
_GiB = 2**30  # bytes as `onnxlm info` and `onnxlm cache` give them


def _meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo's text -> {field: bytes}."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def _cgroup_headroom(root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's memory cgroup may still take (v2's memory.max, else v1's limit), None without a limit."""
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes",
                                                            "memory/memory.usage_in_bytes")):
        cap, used = _read(os.path.join(root, limit)), _read(os.path.join(root, usage))
        if cap and cap.isdigit() and int(cap) < 1 << 60 and used and used.isdigit():
            # the usage counts page cache the kernel reclaims on demand (a downloaded GGUF): as docker stats does,
            # its inactive file pages are not used memory
            stats = _read(os.path.join(os.path.dirname(os.path.join(root, limit)), "memory.stat")) or ""
            fields = dict(line.split()[:2] for line in stats.splitlines() if len(line.split()) == 2)
            cache = fields.get("inactive_file", fields.get("total_inactive_file", "0"))
            cache = int(cache) if cache.isdigit() else 0
            return max(int(cap) - max(int(used) - cache, 0), 0)
    return None


def available_memory(meminfo: str | None = None, cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes of memory an export may take: MemAvailable + SwapFree, capped by a container's cgroup limit; None where
    the system does not say (not Linux)."""
    text = _read("/proc/meminfo") if meminfo is None else meminfo
    info = _meminfo(text or "")
    if "MemAvailable" not in info:
        return None
    free = info["MemAvailable"] + info.get("SwapFree", 0)
    headroom = _cgroup_headroom(cgroup_root)
    return free if headroom is None else min(free, headroom)


def free_disk(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def export_needs(parameters: int, file_bytes: int, *, blocks_kept: bool = True) -> tuple[int, int]:
    """A GGUF export's floors -> (bytes of memory, bytes of disk): the fp32 artifact (the scratch one when the
    file's blocks are kept), and then the artifact on those blocks (about the file's size)."""
    return (MEMORY_BYTES_PER_PARAMETER * parameters,
            DISK_BYTES_PER_PARAMETER * parameters + (file_bytes if blocks_kept else 0))


def check_export_resources(gguf: Path, parameters: int, target: Path, *, blocks_kept: bool = True,
                           in_cache: bool = True) -> None:
    """ExportError, before anything is written, when this machine has less memory or disk (where ``target`` goes)
    than exporting ``gguf`` (``parameters`` weights) needs at the least; nothing when ``$ONNXLM_SKIP_RESOURCE_CHECK``
    is set. ``in_cache``: the export is a first run's, into the cache (the ways out name the cache's); else an
    ``onnxlm export`` into the user's directory."""
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        return
    anyway = f"set {SKIP_ENV}=1 to try anyway"
    elsewhere = (f"export it on a larger machine (onnxlm export {gguf.name} DIR --quantize gguf), copy DIR here and "
                 f"pass it (running it needs about the file's size), or {anyway}" if in_cache
                 else f"export it on a larger machine and copy the artifact here, or {anyway}")
    size = f"exporting {gguf.name} goes through its fp32 model ({parameters / _GB:.2f} B parameters)"
    memory, disk = export_needs(parameters, split_bytes(gguf), blocks_kept=blocks_kept)
    need, have = memory, available_memory()
    if have is not None and have < need:
        raise ExportError(f"{size}, which needs at least {_amount(need)} of memory; this machine has "
                          f"{_amount(have)} available (MemAvailable and free swap, or the container's limit): "
                          f"{elsewhere}")
    need, have = disk, free_disk(target)
    if have < need:
        where = "point $ONNXLM_CACHE elsewhere" if in_cache else "write the artifact to another disk"
        raise ExportError(f"{size}, which needs at least {_amount(need)} of disk in {target.parent}; it has "
                          f"{_amount(have)} free: free some, {where}, or {elsewhere}")


def _amount(n: int) -> str:
    """Bytes in GiB with two decimals, as `onnxlm info` and `onnxlm cache` give them; below 0.01 GiB in MiB (a
    tiny file on a tiny disk read "needs 0.00 GiB, has 0.00 GiB")."""
    return f"{n / _GiB:.2f} GiB" if n >= _GiB / 100 else f"{n / 2**20:.2f} MiB"


def check_gguf_export_resources(gguf: Path, target: Path, *, blocks_kept: bool = True, in_cache: bool = True) -> None:
    """``check_export_resources`` for a GGUF file, its parameters counted from its header (no tensor data read);
    ``blocks_kept``: a second artifact, on the file's blocks, follows the fp32 one."""
    from .gguf_reader import gguf_reader

    check_export_resources(gguf, sum(int(t.n_elements) for t in gguf_reader(gguf).tensors), target,
                           blocks_kept=blocks_kept, in_cache=in_cache)
