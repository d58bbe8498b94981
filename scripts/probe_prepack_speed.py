"""Decode ms/token of an artifact with onnxruntime prepacking on (default) or off (noprepack), and/or glibc's malloc
left alone (untuned: ONNXLM_MALLOC_TUNING=0, runtime/heap.py): argv VARIANT MODEL_DIR."""
import os, sys, time, numpy as np
variant = sys.argv[1]
if 'untuned' in variant:
    os.environ["ONNXLM_MALLOC_TUNING"] = "0"
import onnxruntime as ort
import onnxlm
Orig = ort.SessionOptions
class Opts(Orig):
    def __init__(self):
        super().__init__()
        if 'noprepack' in variant: self.add_session_config_entry('session.disable_prepacking', '1')
ort.SessionOptions = Opts
m = onnxlm.load(sys.argv[2], threads=2)
def t(prompts, n):
    t0 = time.perf_counter(); m.generate(prompts, max_new_tokens=n, min_new_tokens=n); return time.perf_counter() - t0
res = {}
for name, prompts in [("b1", ["The capital of France is"]), ("b8", ["The capital of France is"] * 8), ("p512", ["Hello " * 500])]:
    t(prompts, 2)
    a = [t(prompts, 1) for _ in range(3)]; b = [t(prompts, 25) for _ in range(3)]
    res[name] = (np.median(b) - np.median(a)) / 24 * 1000
print(variant, " ".join(f"{k} {v:.1f} ms/token" for k, v in res.items()))
