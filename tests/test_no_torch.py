"""The runtime works where torch, transformers, optimum and onnx cannot be imported at all, and gives the same
values there as in a process where they are importable."""
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

RUN = textwrap.dedent("""
    def run(causal_dir, t5_dir):
        import onnxlm
        causal = onnxlm.load(causal_dir)
        gen = causal.generate(["Hello", "A longer prompt"], max_new_tokens=5)
        beams = causal.generate("Hello", max_new_tokens=4, num_beams=3, eos_token_id=[])
        sampled = causal.generate("Hello", max_new_tokens=4, do_sample=True, seed=3, top_p=0.9)
        sc = causal.score("Hello there", prepend_bos=True)
        logits = causal.logits([[72, 101, 108]])
        t5 = onnxlm.load(t5_dir)
        gen2 = t5.generate("translate: house", max_new_tokens=4)
        sc2 = t5.score("translate: house", targets="Haus")
        return {"gen": gen.sequences.tolist(), "text": gen.text, "beams": beams.sequences.tolist(),
                "beam_scores": beams.sequences_scores.tolist(), "sampled": sampled.sequences.tolist(),
                "score": sc.token_logprobs[0].tolist(), "logits": logits[0, -1, :20].tolist(),
                "t5": gen2.sequences.tolist(), "score2": sc2.token_logprobs[0].tolist()}
""")

SCRIPT = BLOCKER + RUN + textwrap.dedent("""
    import json
    out = run(sys.argv[1], sys.argv[2])
    out["heavy"] = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    print(json.dumps(out))
""")


def test_runtime_without_torch(tiny_gpt2, tiny_t5):
    """Same ids, texts, scores and logits (bit for bit: same graphs, same onnxruntime) with and without torch."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_gpt2.onnx_dir), str(tiny_t5.onnx_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("heavy") == []
    import torch  # noqa: F401 - the reference run happens with torch importable (and imported)
    namespace: dict = {}
    exec(RUN, namespace)
    want = json.loads(json.dumps(namespace["run"](str(tiny_gpt2.onnx_dir), str(tiny_t5.onnx_dir))))
    assert out == want


def test_blocker_really_blocks():
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import torch"], capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr


RUN_CONSTRAINED = textwrap.dedent("""
    def run_constrained(causal_dir):
        import onnxlm
        m = onnxlm.load(causal_dir)
        schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                  "required": ["n"], "additionalProperties": False}
        js = m.generate(["Hello", "A longer prompt"], json_schema=schema, max_new_tokens=12)
        beams = m.generate("Hello", regex="[0-9]{2}", max_new_tokens=4, num_beams=3)
        sampled = m.generate("Hello", choices=["yes", "no"], max_new_tokens=4, do_sample=True, seed=1)
        return {"js": js.sequences.tolist(), "js_ok": js.constraint_satisfied, "beams": beams.sequences.tolist(),
                "sampled": sampled.text}
""")


def test_constrained_generation_without_torch(tiny_gpt2):
    """Structured output (llguidance) in a process where torch & co. cannot be imported: same ids as with them."""
    script = BLOCKER + RUN_CONSTRAINED + textwrap.dedent("""
        import json
        out = run_constrained(sys.argv[1])
        out["heavy"] = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_gpt2.onnx_dir)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("heavy") == []
    assert out["js_ok"] == [True, True] and out["sampled"][0] in ("yes", "no")
    namespace: dict = {}
    exec(RUN_CONSTRAINED, namespace)
    assert out == json.loads(json.dumps(namespace["run_constrained"](str(tiny_gpt2.onnx_dir))))
