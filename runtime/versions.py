"""The versions of the libraries the runtime runs on that give its answers: onnxruntime (for every artifact, and what
one artifact's graphs need), tokenizers, llguidance.

Found by ``scripts/dependency_floor.py`` (2026-12-06, CPU, Python 3.11: one artifact of each family and variant on
onnxruntime 1.19-1.32; the tests' GGUF vocabularies on tokenizers 0.15-0.23; the structured tests on llguidance
1.0-1.9):

- onnxruntime 1.23 opens and answers every graph as 1.32 does, but two: GroupQueryAttention's ``local_window_size``
  w attends to w + 1 positions before 1.24 (one more than 1.24 and later, and transformers' sliding window: the
  sliding-window layers of Mistral, Gemma 2/3, EXAONE 4 give other logits past the window, without an error; 1.23
  with w - 1 gives 1.32's logits to 2e-6), so an artifact with such a layer records that it needs 1.24
  (``"requires"`` in its manifest), and on 1.23 the runtime hands onnxruntime its graphs with w - 1
  where the build counts that way (``window_narrowing.py``, ``runs_narrowed``; the build is asked by a one-node
  graph: 1.23.0 and 1.23.2 count wider, 1.24.1 and 1.32 not; 2026-12-07, every windowed artifact of the script
  "ok" on 1.23.2; Gemma 3 270M fp32 past its 512-position window within 7.4e-5 of 1.32, 0.88 off unnarrowed); and
  8-bit K-quant products at accuracy level 4 round otherwise before 1.30 (logits
  ~3e-3 apart, relative: a quantized variant's other rounding, not a wrong graph; its gate measured it on the
  exporting machine's). 1.22 and before cannot open the quantized variants (``GatherBlockQuantized``), 1.21 and
  before the fused T5 decoder, 1.20 and before the soft-capped graphs. Python 3.10 has onnxruntime wheels up to 1.23
  (so there a windowed artifact runs, and its export validates, narrowed: ``check_runnable``).
- Exporting int8 / int4 variants needs onnxruntime 1.24 (its ``MatMulNBitsQuantizer`` takes ``bits`` from then);
  the test suite 1.32 (its one-node graphs carry onnx 1.23.2's IR version 14, which onnxruntime reads from 1.32;
  every artifact onnxlm writes is IR 8).
- tokenizers 0.21.2: 0.21.0-0.21.1 split one text of Unicode 15.1's CJK Extension I otherwise than llama.cpp in 11 of
  the vocabularies (older Unicode tables in the split regex); before 0.21 there is no ``DecodeStream``.
- llguidance 1.7: 1.6 and before take one EOS id, not several (a TypeError mid-call).
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import re
import sys
from pathlib import Path

from .errors import DependencyError, ManifestError

MIN_ONNXRUNTIME = (1, 23)  # every artifact (pyproject's floor for onnxruntime and onnxruntime-gpu)
SLIDING_WINDOW_ONNXRUNTIME = (1, 24)  # an artifact with a sliding-window GroupQueryAttention
QUANTIZER_ONNXRUNTIME = (1, 24)  # export's int8 / int4: onnxruntime's MatMulNBitsQuantizer takes bits= from 1.24
MIN_TOKENIZERS = (0, 21, 2)
MIN_LLGUIDANCE = (1, 7)


def window_binds(window: int | None, max_positions: int | None) -> bool:
    """Whether a sliding window of ``window`` positions (None: none) can bind in an artifact of ``max_positions``
    (None: no limit): before 1.24 onnxruntime's window holds one position more, which changes nothing while a
    sequence holds at most ``window`` (Phi-3.5's 262,144 over 4,096 positions never binds)."""
    return window is not None and (max_positions is None or window < max_positions)


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """'1.30.0rc1' -> (1, 30, 0), '1.31.0+cu124' -> (1, 31, 0); None for a version with no leading numbers (a local
    build's, or none)."""
    found = re.match(r"\d+(?:\.\d+)*", text or "")
    return tuple(int(p) for p in found[0].split(".")) if found else None


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


@functools.lru_cache(maxsize=None)
def installed_version(distribution: str) -> str | None:
    """A distribution's installed version (its metadata), or None when it has none to read."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _older(version: str | None, least: tuple[int, ...]) -> bool:
    found = version_tuple(version)
    return found is not None and found < least


def check_onnxruntime(least: tuple[int, ...] = MIN_ONNXRUNTIME, *, needed_by: str = "onnxlm", why: str | None = None,
                      version: str | None = None) -> None:
    """Raise DependencyError when onnxruntime (``version``, else the imported one) is older than ``least``, saying
    what needs it (``needed_by``) and why (default: the floor's reason)."""
    if version is None:
        import onnxruntime

        version = onnxruntime.__version__
    if not _older(version, least):
        return
    package = "onnxruntime-gpu[cuda,cudnn]" if installed_version("onnxruntime-gpu") else "onnxruntime"
    python = (" (onnxruntime 1.24 and later have no wheels for Python 3.10: Python 3.11 or newer)"
              if least >= SLIDING_WINDOW_ONNXRUNTIME and sys.version_info < (3, 11) else "")
    if why is None:
        why = ("older versions cannot open its quantized graphs: GatherBlockQuantized came in 1.23"
               if least == MIN_ONNXRUNTIME else "recorded at its export")
    raise DependencyError(f"onnxruntime {version} is installed; {needed_by} needs onnxruntime >= {dotted(least)} "
                          f"({why}). Upgrade: pip install -U '{package}>={dotted(least)}'{python}")


def _config_has_windows(model_dir: Path, max_positions: int | None) -> bool:
    """An artifact's config.json -> whether a layer has a sliding window shorter than ``max_positions`` (the
    artifact's; export/fused_llama.py's ``sliding_windows``: Qwen 2 and SmolLM3 only with ``use_sliding_window``;
    ``layer_types`` names the windowed layers); True when there is no readable config (nothing says otherwise)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    if not isinstance(config, dict):
        return True
    window = config.get("sliding_window")
    if config.get("model_type") in ("qwen2", "smollm3") and not config.get("use_sliding_window", False):
        window = None
    types = config.get("layer_types")
    binds = window_binds(window, max_positions) if window is None or isinstance(window, int) else True  # unreadable
    return binds and (not isinstance(types, list) or "sliding_attention" in types)


def artifact_onnxruntime(manifest: dict, model_dir=None) -> tuple[int, ...]:
    """The oldest onnxruntime an artifact's graphs answer right on: its manifest's ``requires.onnxruntime`` (written
    at export from its graphs); for a fused artifact exported before that field, 1.24 where its config.json (in
    ``model_dir``) has a sliding window; else ``MIN_ONNXRUNTIME``. ManifestError for a ``requires`` of another form."""
    requires = manifest.get("requires")
    if requires is not None:
        recorded = requires.get("onnxruntime") if isinstance(requires, dict) else None
        least = version_tuple(recorded) if isinstance(recorded, str) else None
        if least is None:
            raise ManifestError(f"{model_dir or 'the manifest'}: requires={requires!r}; expected "
                                '{"onnxruntime": "<major>.<minor>"} (re-export the artifact)')
        return max(least, MIN_ONNXRUNTIME)
    if manifest.get("kv_layout") == "fused-gqa" and (model_dir is None or
                                                     _config_has_windows(model_dir, manifest.get("max_positions"))):
        return SLIDING_WINDOW_ONNXRUNTIME
    return MIN_ONNXRUNTIME


def runs_narrowed(least: tuple[int, ...]) -> bool:
    """Whether graphs that need onnxruntime ``least`` run on the imported one with their sliding windows narrowed by
    one position (``runtime/window_narrowing.py``): they need 1.24 for their windows alone, and this build counts a
    window one position wider, as before 1.24 (``window_narrowing.counts_window_wider`` asks the build itself: a
    nightly or a patch release may differ from its number)."""
    if least != SLIDING_WINDOW_ONNXRUNTIME:
        return False
    from .window_narrowing import counts_window_wider

    return counts_window_wider()


def check_runnable(least: tuple[int, ...], needed_by: str) -> None:
    """``check_onnxruntime`` for graphs that need onnxruntime ``least`` (an artifact's, an exported graph's) and run
    through the runtime: the floor's check and message where that is all they need, sliding windows alone (1.24)
    included (1.23 runs them with each window one position narrower, ``runs_narrowed``); else their own, naming
    ``needed_by`` and the export's record."""
    if least <= SLIDING_WINDOW_ONNXRUNTIME:
        return check_onnxruntime()
    check_onnxruntime(least, needed_by=needed_by, why="recorded at its export")


def check_artifact_onnxruntime(manifest: dict, model_dir) -> None:
    """DependencyError when the imported onnxruntime is older than the artifact in ``model_dir`` needs
    (``check_runnable``: one whose sliding windows alone need 1.24 runs on 1.23)."""
    check_runnable(artifact_onnxruntime(manifest, model_dir), f"the artifact {model_dir}")


def check_tokenizers() -> None:
    """DependencyError when the installed tokenizers is older than ``MIN_TOKENIZERS`` (other ids than llama.cpp's on
    some texts)."""
    version = installed_version("tokenizers")
    if _older(version, MIN_TOKENIZERS):
        raise DependencyError(f"tokenizers {version} is installed; onnxlm needs tokenizers >= {dotted(MIN_TOKENIZERS)} "
                              "(0.21.0-0.21.1 split some Unicode 15.1 letters otherwise). Upgrade: pip install -U "
                              f"'tokenizers>={dotted(MIN_TOKENIZERS)}'")


def llguidance_too_old(module) -> str | None:
    """The imported llguidance module -> its version when older than ``MIN_LLGUIDANCE``, else None."""
    version = getattr(module, "__version__", None) or installed_version("llguidance")
    return version if _older(version, MIN_LLGUIDANCE) else None
