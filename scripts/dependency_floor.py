"""Does an older onnxruntime (tokenizers, numpy) answer as the installed one does on onnxlm's graphs and
vocabularies? (How pyproject's floors and runtime/versions.py's were found.)

    .venv/bin/python scripts/dependency_floor.py build /tmp/floor        # with the installed versions
    .venv/bin/python -m pip install --no-deps --target /tmp/ort-1.29.0 onnxruntime==1.29.0
    PYTHONPATH=/tmp/ort-1.29.0 .venv/bin/python scripts/dependency_floor.py check /tmp/floor

``build`` (needs the export and test extras) exports one artifact of each kind onnxlm writes: the fused graphs of
the families whose graphs use different onnxruntime features (sliding windows, soft-capping, partial and
interleaved rotaries, q/k norms, convolution layers, GPT-2, T5), the plain (optimum) Llama and T5, int8 / int4, and
GGUF variants of tiny Q4_1 and K-quant files at accuracy levels 1 and 4; it stores their logits on a left-padded
batch, greedy ids and 2-beam ids. ``check`` loads each with the onnxruntime it runs on (past onnxlm's own
version checks, which it turns off) and prints, per artifact, ``ok`` or what differs (logits beyond 1e-4 of their
largest magnitude, any id) or why it failed. ``build`` also writes the tokenizer.json that onnxlm builds
from each GGUF vocabulary of tests/test_gguf_tokenizers.py (those installed), and ``check`` encodes the corpus with
each through the runtime's tokenizer, as test_every_id_equals_llama_cpp does, against llama.cpp's stored ids (Phi-3's
one documented text aside). The exit status is the number of artifacts and vocabularies that did not match.

Found on 2026-12-06 (Python 3.11): onnxruntime 1.30-1.32 answer alike, 1.24-1.29 alike but for the 8-bit K-quant
level-4 roundings, 1.23 alike but for those and the sliding windows (2026-12-07: alike for those too, the runtime
handing 1.23 each window one narrower, ``runtime/window_narrowing.py``, which ``check`` keeps: it turns off the
version checks only, and the narrowing follows the build's own probe, so an older build that counts windows as 1.23
does is narrowed too), 1.22 and before cannot open some graphs (runtime/versions.py says which); tokenizers 0.21.2-0.23.3 give llama.cpp's ids, 0.21.0-0.21.1 split one text
of Unicode 15.1 CJK Extension I otherwise in 11 vocabularies (older Unicode tables in the split regex), before 0.21
``import onnxlm`` fails (no ``DecodeStream``); numpy 1.24.4 and 1.26.4 answer as 2.4. The extras' floors were found
by running their tests the same way (``PYTHONPATH=<a --target install> pytest tests/test_structured.py ...``):
llguidance 1.7 (1.6 and before take one EOS id), sse-starlette 3.0 (2.x cuts a failing stream before its error
event), pyarrow 16 (14-15 do not import beside numpy 2), ray 2.45 (2.44 and before: "Broken pipe" in ray.put here).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["tiny-llama", "tiny-qwen3", "tiny-phi3-partial-longrope", "tiny-ernie4_5", "tiny-exaone4", "tiny-stablelm",
            "tiny-stablelm2", "tiny-gemma2", "tiny-gemma3-text", "tiny-lfm2", "tiny-mistral-sliding-window",
            "tiny-gpt2-untied-inverse-layer-scale", "tiny-t5-gated-gelu-tied", "tiny-granite", "tiny-smollm3"]
IDS = [[1, 40, 41, 72, 100, 150, 200, 3], [0, 0, 0, 9, 250, 77, 120, 5]]  # [2, 8]: the second row left-padded
MASK = [[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]]


def build(out: Path) -> None:
    """Export every artifact kind into ``out`` and store the installed onnxruntime's answers (refs.npz)."""
    sys.path.insert(0, str(REPO / "tests"))
    from gate_text import SHORT_GATE_TEXT
    from test_gguf_quant import KQ_TYPES, TYPES, write_tiny_gguf

    from onnxlm.export import export_model, quantize_artifact
    from onnxlm.export.recipes import build_recipe

    recipes, arts = REPO / "models" / "recipes", {}
    for name in FAMILIES:
        recipe = recipes / "families" / name if (recipes / "families" / name).is_dir() else recipes / name
        hf = build_recipe(recipe, out / "hf" / name)
        arts[name] = export_model(hf, out / name, progress=False)  # "auto": the fused graph of each
    arts["plain-llama"] = export_model(out / "hf" / "tiny-llama", out / "plain-llama", progress=False,
                                       kv_layout="plain")
    arts["plain-t5"] = export_model(build_recipe(recipes / "tiny-t5", out / "hf" / "tiny-t5"), out / "plain-t5",
                                    progress=False, kv_layout="plain")
    for scheme in ("int8", "int4"):
        arts[f"llama-{scheme}"] = quantize_artifact(arts["tiny-llama"], out / f"llama-{scheme}", scheme=scheme,
                                                    force_quality=True, progress=False)
    warnings.simplefilter("ignore")  # the K-quant file's IQ types' warnings
    kquant = dict(hidden=256, ffn=256, embedding="Q6_K")
    for tag, types, kw in (("gguf-q4_1", TYPES, {}), ("gguf-kquant", KQ_TYPES, kquant)):
        path = out / f"{tag}.gguf"
        write_tiny_gguf(path, types, **kw)
        for level in (1, 4):
            arts[f"{tag}-level{level}"] = export_model(path, out / f"{tag}-level{level}", quantize="gguf",
                                                       accuracy_level=level, force_quality=True,
                                                       quality_text=SHORT_GATE_TEXT, progress=False)
    _build_vocabularies(out / "vocabularies")
    answers = {f"{name}|{what}": a for name, p in arts.items() for what, a in _answers(Path(p)).items()}
    np.savez(out / "refs.npz", **answers)
    (out / "artifacts.json").write_text(json.dumps({k: str(v) for k, v in arts.items()}, indent=1))


def _build_vocabularies(out: Path) -> None:
    """Each installed vocabulary of tests/test_gguf_tokenizers.py's PROVEN -> out/<name>.tokenizer.json."""
    import gguf_vocabs
    from test_gguf_tokenizers import PROVEN

    from onnxlm.export.gguf import build_tokenizer_from_gguf

    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(PROVEN):
        try:
            meta = gguf_vocabs.vocab_metadata(name)
        except Exception as exc:  # noqa: BLE001 - a vocabulary package that is not installed is left out
            print(f"vocabulary {name} left out: {exc}")
            continue
        build_tokenizer_from_gguf(meta).save(str(out / f"{name}.tokenizer.json"))


def _check_vocabularies(out: Path) -> int:
    """The corpus through each built tokenizer.json, as the runtime loads it -> vocabularies whose ids differ from
    llama.cpp's (tests/data/gguf_tokenizers)."""
    import tokenizers

    sys.path.insert(0, str(REPO / "tests"))
    from test_gguf_tokenizers import KNOWN_DIFFERENCES, TEXTS

    from onnxlm.runtime.tokenizer import TextTokenizer

    modes = {"special": {}, "special_no_add": {"add_special_tokens": False}, "plain": {"split_special_tokens": True}}
    bad = 0
    for path in sorted(out.glob("*.tokenizer.json")):
        name = path.name.split(".tokenizer.json")[0]
        ref = json.loads((REPO / "tests" / "data" / "gguf_tokenizers" / f"{name}.ids.json").read_text("utf-8"))["ids"]
        tok = TextTokenizer.from_file(path)
        known = KNOWN_DIFFERENCES[name](tok.tokenizer) if name in KNOWN_DIFFERENCES else (lambda text: False)
        differ = {mode: sum(tok.encode(t, **kw) != r for t, r in zip(TEXTS, ref[mode]) if not known(t))
                  for mode, kw in modes.items()}
        differ = {mode: n for mode, n in differ.items() if n}
        print(f"tokenizers {tokenizers.__version__} {name}: {differ and f'texts with other ids {differ}' or 'ok'}")
        bad += bool(differ)
    return bad


def _answers(path: Path) -> dict[str, np.ndarray]:
    """An artifact -> {"logits": [2, 8, V] float32 (decoder-only), "greedy": ids, "beam": ids}."""
    import onnxlm

    m = onnxlm.load(path)
    ids, mask = np.array(IDS, np.int64) % m.vocab_size, np.array(MASK, np.int64)
    if m.is_encoder_decoder:
        return {"greedy": np.asarray(m.generate(ids[:1], max_new_tokens=5, do_sample=False).sequences),
                "beam": np.asarray(m.generate(ids[:1], max_new_tokens=5, do_sample=False, num_beams=2).sequences)}
    return {"logits": m.logits(ids, mask),
            "greedy": np.asarray(m.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                            eos_token_id=[]).sequences),
            "beam": np.asarray(m.generate(ids[:1], max_new_tokens=5, do_sample=False, num_beams=2,
                                          eos_token_id=[]).sequences)}


def check(out: Path) -> int:
    """Load every artifact of ``build`` with this onnxruntime -> how many did not answer as stored."""
    import onnxruntime

    from onnxlm.runtime import loader, session, tokenizer

    def unchecked(*args, **kwargs) -> None:  # the version under test is the question here
        return None

    loader.check_onnxruntime = loader.check_artifact_onnxruntime = session.check_onnxruntime = unchecked
    tokenizer.check_tokenizers = unchecked
    arts, refs, bad = json.loads((out / "artifacts.json").read_text()), np.load(out / "refs.npz"), 0
    for name, path in arts.items():
        try:
            diffs = []
            for what, got in _answers(Path(path)).items():
                want = refs[f"{name}|{what}"]
                if what == "logits":
                    d = float(np.abs(got - want)[np.array(MASK, bool)].max())
                    if d > 1e-4 * max(1.0, float(np.abs(want).max())):
                        diffs.append(f"logits {d:.3g} apart (largest {float(np.abs(want).max()):.3g})")
                elif got.shape != want.shape or (got != want).any():
                    diffs.append(f"{what} ids differ")
            print(f"onnxruntime {onnxruntime.__version__} {name}: {'; '.join(diffs) or 'ok'}", flush=True)
        except Exception as exc:  # noqa: BLE001 - any failure is a finding to print
            diffs = [exc]
            print(f"onnxruntime {onnxruntime.__version__} {name}: failed: {type(exc).__name__}: {str(exc)[:300]}",
                  flush=True)
        bad += bool(diffs)
    print(f"onnxruntime {onnxruntime.__version__}: {bad} of {len(arts)} artifacts differ or fail")
    return bad + _check_vocabularies(out / "vocabularies")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "check"):
        sys.exit(__doc__)
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    else:
        sys.exit(min(check(Path(sys.argv[2])), 125))
