"""Peak RSS of a loaded artifact under onnxruntime / malloc settings (argv: VARIANT MODEL_DIR; VARIANT is 'default'
or a '-'-joined set of: untuned (ONNXLM_MALLOC_TUNING=0: glibc's malloc left alone, runtime/heap.py), noprepack
(session.disable_prepacking=1), noarena (CPU arena off); e.g. noprepack-noarena)."""
import os
import sys
import time

variant = sys.argv[1]
if 'untuned' in variant:
    os.environ["ONNXLM_MALLOC_TUNING"] = "0"
import onnxruntime as ort

import onnxlm


def rss(field):
    for l in open('/proc/self/status'):
        if l.startswith(field): return int(l.split()[1]) / 1024
base = rss('VmRSS')
Orig = ort.SessionOptions
class Opts(Orig):
    def __init__(self):
        super().__init__()
        if 'noprepack' in variant: self.add_session_config_entry('session.disable_prepacking', '1')
        if 'noarena' in variant: self.enable_cpu_mem_arena = False
ort.SessionOptions = Opts
m = onnxlm.load(sys.argv[2], threads=2)
after_load = rss('VmRSS') - base
t0 = time.time()
m.generate(["Hello " * 250], max_new_tokens=24)
m.generate(["The capital of France is"] * 8, max_new_tokens=24)
m.generate(["The capital of France is"], max_new_tokens=24, num_beams=4)
t = time.time() - t0
print(f"{variant}: after load {after_load:.0f} MB, peak above imports {rss('VmHWM') - base:.0f} MB, now {rss('VmRSS') - base:.0f} MB, {t:.1f} s")
