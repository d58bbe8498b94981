"""What the engine workers share: the 'unsupported mode' signal and transformers' generate arguments per mode.
Only numpy and the engine's own libraries are imported by a worker: the llama.cpp worker runs in another venv."""
from __future__ import annotations


class Unsupported(Exception):
    """The engine has no such mode (e.g. beam search, batches): reported as a note, not a failure."""


def mode_error(case: dict, engine: str, batch_ok: bool = True, beam_ok: bool = True, sample_ok: bool = True):
    if case["batch"] > 1 and not batch_ok:
        raise Unsupported(f"{engine}: one sequence per call (no batch)")
    if case["mode"] == "beam4" and not beam_ok:
        raise Unsupported(f"{engine}: no beam search")
    if case["mode"] == "sample" and not sample_ok:
        raise Unsupported(f"{engine}: no sampling")


def hf_kwargs(mode: str) -> dict:
    return {"greedy": {"do_sample": False, "num_beams": 1}, "sample": {"do_sample": True, "top_k": 50, "num_beams": 1},
            "beam4": {"do_sample": False, "num_beams": 4}}[mode]

