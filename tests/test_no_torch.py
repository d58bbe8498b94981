"""The runtime works where torch, transformers, optimum and onnx cannot be imported at all."""
import json
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import sys, importlib.abc
    BLOCKED = ("torch", "transformers", "optimum", "onnx", "onnxscript", "gguf")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked in this test: {name}")
    sys.meta_path.insert(0, Block())
""")

SCRIPT = BLOCKER + textwrap.dedent("""
    import json, onnxlm
    causal = onnxlm.load(sys.argv[1])
    gen = causal.generate(["Hello", "A longer prompt"], max_new_tokens=5)
    sc = causal.score("Hello there", prepend_bos=True)
    t5 = onnxlm.load(sys.argv[2])
    gen2 = t5.generate("translate: house", max_new_tokens=4)
    sc2 = t5.score("translate: house", targets="Haus")
    heavy = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    print(json.dumps({"shape": list(gen.sequences.shape), "score": float(sc.sequence_logprobs[0]),
                      "t5": list(gen2.sequences.shape), "score2": float(sc2.sequence_logprobs[0]), "heavy": heavy}))
""")


def test_runtime_without_torch(tiny_gpt2, tiny_t5):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_gpt2.onnx_dir), str(tiny_t5.onnx_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"][0] == 2 and out["shape"][1] >= 5
    assert out["score"] < 0 and out["score2"] < 0
    assert out["heavy"] == []


def test_blocker_really_blocks():
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import torch"], capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr
