"""Peak RSS of one artifact under onnxruntime / malloc settings: MiB above the process's RSS after its imports,
after the load, at the peak (Linux VmHWM) and settled at the end.

    .venv/bin/python -m benchmarks.memory default models/smollm2-135m-instruct
    .venv/bin/python -m benchmarks.memory untuned-noprepack models/smollm2-135m-instruct --threads 2

The work: ``onnxlm.load``, then three ``generate`` calls of 24 new tokens (a ~250-token prompt, a batch of 8, a
4-beam search). VARIANT is ``default`` or a '-'-joined set of: ``untuned`` (``ONNXLM_MALLOC_TUNING=0``: glibc's
malloc left alone, runtime/heap.py), ``noprepack`` (``session.disable_prepacking=1``: onnxruntime keeps the weights
unpacked), ``noarena`` (the CPU arena off). One variant per process (the settings are process-wide): run it once per
variant, alternating, and read the figures together (docs/benchmarks.md, "Memory: where the peak RSS goes").
"""
from __future__ import annotations

import argparse
import os
import time

VARIANTS = ("untuned", "noprepack", "noarena")


def rss_mib(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variant", metavar="VARIANT", help="default, or a '-'-joined set of " + ", ".join(VARIANTS))
    p.add_argument("model_dir", metavar="MODEL_DIR", help="an onnxlm artifact")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default: 2)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the manifest's sha256 checks (an artifact whose graph was rewritten by hand)")
    args = p.parse_args(argv)
    parts = set(args.variant.split("-")) - {"default"}
    if parts - set(VARIANTS):
        p.error(f"VARIANT: unknown {sorted(parts - set(VARIANTS))}; allowed: default or {', '.join(VARIANTS)}")
    if "untuned" in parts:
        os.environ["ONNXLM_MALLOC_TUNING"] = "0"  # read when onnxlm builds its first session
    import onnxruntime as ort

    import onnxlm

    base = rss_mib("VmRSS")
    original = ort.SessionOptions

    class Options(original):  # every session onnxlm opens gets the variant's settings
        def __init__(self):
            super().__init__()
            if "noprepack" in parts:
                self.add_session_config_entry("session.disable_prepacking", "1")
            if "noarena" in parts:
                self.enable_cpu_mem_arena = False

    ort.SessionOptions = Options
    model = onnxlm.load(args.model_dir, threads=args.threads, verify=not args.no_verify)
    after_load = rss_mib("VmRSS") - base
    t0 = time.time()
    model.generate(["Hello " * 250], max_new_tokens=24)
    model.generate(["The capital of France is"] * 8, max_new_tokens=24)
    model.generate(["The capital of France is"], max_new_tokens=24, num_beams=4)
    seconds = time.time() - t0
    print(f"{args.variant}: after load {after_load:.0f} MB, peak above imports {rss_mib('VmHWM') - base:.0f} MB, "
          f"now {rss_mib('VmRSS') - base:.0f} MB, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
