"""An embedding-only encoder (a ``bert`` GGUF's BertModel, a ``nomic-bert`` GGUF's NomicBertModel:
export/nomic_bert.py) -> a validated artifact of ``kind = "embedding"``.

One graph, ``model.onnx`` (torch.onnx, TorchScript exporter, opset ``OPSET``): inputs ``input_ids`` [b, s] int64,
``attention_mask`` [b, s] int64 (1 on a row's own tokens; padding on either side), ``token_type_ids`` [b, s] int64
(0: one sequence, as llama.cpp feeds BERT); output ``last_hidden_state`` [b, s, D] float32 (the model's
``last_hidden_state``: the last layer's output, after its LayerNorm). Beside it ``tokenizer.json``
(export/gguf_wpm.py), ``config.json`` and ``onnxlm.json``: ``kind`` "embedding", ``model_type`` ("bert",
"nomic_bert"), the dimensions, ``pooling`` (the file's ``{arch}.pooling_type``: the runtime's default), the special
ids (``bos_token_id``: [CLS], put first; ``sep_token_id``: put last; ``pad_token_id``), ``validation`` and
``source`` (the GGUF's sha256).

A row's positions are counted from its first held token (``attention_mask``'s running sum), so a row padded on
either side gets the states it gets alone. Validation: onnxruntime on a right-padded and a left-padded batch of three
lengths against PyTorch on each row alone, every position a row holds: the largest absolute difference of
``last_hidden_state`` must be at most ``tolerance`` (default ``1e-4``). Written into a temp dir beside ``out_dir``
and renamed into place once it passes (export/atomic_dir.py).

A reranker (a ``bert`` file with ``pooling_type`` 4, rank, and its ``cls.*`` head: export/gguf_bert.py ``rank_head``)
gains a second output, ``rank_scores`` [b, n_labels] float32: llama.cpp's RANK pooling, the head on each row's first
held token's state (what llama.cpp's ``build_inp_cls`` picks: the lowest position), ``tanh(cls.weight x + cls.bias)``
then ``cls.output.weight . + cls.output.bias``, no sigmoid. Its manifest says ``pooling`` "rank" and ``rank``
(``n_labels``, ``labels``, ``pair``: the ids llama.cpp's server puts around query and document); validation compares
``rank_scores`` too.
"""
from __future__ import annotations

import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from onnxlm.runtime.errors import ExportError

from .atomic_dir import move_into_place, remove_tree, temp_dir_beside
from .manifest import graph_io, versions, write_manifest
from .provenance import source_record

__all__ = ["OPSET", "KIND", "export_encoder_gguf", "load_encoder_gguf", "validate_encoder"]

OPSET = 17
KIND = "embedding"  # the manifest kind runtime/loader.py opens as an EncoderEmbedder
DEFAULT_TOLERANCE = 1e-4
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[onnxlm export] {msg}", file=sys.stderr, flush=True)


def rank_module(head: dict):
    """A reranker's head (export/gguf_bert.py ``rank_head``'s arrays) -> a torch module [n, D] -> [n, n_labels]:
    llama.cpp's RANK head (``build_pooling``): cls + bias, tanh, then cls.output + bias, each where present."""
    import torch

    class RankHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.names = [k.replace(".", "_") for k in head]
            for k, v in head.items():
                self.register_buffer(k.replace(".", "_"), torch.from_numpy(np.array(v, np.float32)))

        def forward(self, x):
            if "cls_weight" in self.names:
                x = x @ self.cls_weight.T
                if "cls_bias" in self.names:
                    x = x + self.cls_bias
                x = torch.tanh(x)
            if "cls_output_weight" in self.names:
                x = x @ self.cls_output_weight.T
                if "cls_output_bias" in self.names:
                    x = x + self.cls_output_bias
            return x

    return RankHead().eval()


def _export_graph(model, path: Path, head: dict | None = None) -> None:
    """The encoder (BertModel / NomicBertModel) -> ``path`` (ONNX, dynamic batch and length); with a reranker's
    ``head`` a second output ``rank_scores`` (the module doc)."""
    import torch

    class Encoder(torch.nn.Module):  # [b, s] int64 x3 -> [b, s, D] float32 (and [b, n_labels] with a head)
        def __init__(self, bert):
            super().__init__()
            self.bert = bert
            self.head = rank_module(head) if head else None

        def forward(self, input_ids, attention_mask, token_type_ids):
            # a row's positions count its own tokens: 0, 1, ... from its first held one, padded on either side
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=positions).last_hidden_state
            if self.head is None:
                return hidden
            # the first held token of each row (llama.cpp's cls row: the lowest position), padded on either side
            first = ((positions == 0) & (attention_mask == 1)).to(hidden.dtype)  # [b, s], one 1 a row
            return hidden, self.head((hidden * first.unsqueeze(-1)).sum(1))

    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    dynamic = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
               "token_type_ids": {0: "batch", 1: "length"}, "last_hidden_state": {0: "batch", 1: "length"}}
    outputs = ["last_hidden_state"] + (["rank_scores"] if head else [])
    if head:
        dynamic["rank_scores"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a copy: torch's TorchScript exporter leaves the model it traced computing other numbers (measured: 2.1 off
        # on the tiny BERT), and the validation runs the model
        torch.onnx.export(Encoder(copy.deepcopy(model)), (ids, mask, torch.zeros_like(ids)), str(path),
                          input_names=list(INPUTS), output_names=outputs, dynamic_axes=dynamic,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def _rows(vocab: int, length: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, size=n).tolist() for n in (length, max(1, length // 2), 1)]


def validate_encoder(model, path: Path, tolerance: float | None = None, head: dict | None = None) -> dict:
    """onnxruntime's ``last_hidden_state`` of ``path`` on a right- and a left-padded batch against PyTorch's of each
    row alone (unpadded), at the row's own positions (and with a reranker's ``head`` its ``rank_scores`` against the
    head on the row's first state) -> ``{"max_abs_diff", "tolerance", "rows", "paddings"}``; ExportError past
    ``tolerance``."""
    import onnxruntime as ort
    import torch

    tol = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = _rows(model.config.vocab_size, min(16, model.config.max_position_embeddings))
    width = max(len(r) for r in rows)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([r])).last_hidden_state[0].numpy() for r in rows]
        scores = (rank_module(head)(torch.from_numpy(np.stack([a[0] for a in alone]))).numpy() if head else None)
    worst = 0.0
    for side in ("right", "left"):
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
            ids[i, span], mask[i, span] = r, 1
        types = np.zeros_like(ids)
        outs = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        got = outs[0]
        held = mask.astype(bool)
        worst = max(worst, max(float(np.abs(got[i][held[i]] - want).max()) for i, want in enumerate(alone)))
        if scores is not None:
            worst = max(worst, float(np.abs(outs[1] - scores).max()))
    if not worst <= tol:
        raise ExportError(f"{path}: onnxruntime's last_hidden_state differs from PyTorch's by {worst:.3g} "
                          f"(tolerance {tol:g}); a model this sensitive to float32 rounding exports with a looser "
                          "tolerance: onnxlm export FILE.gguf OUT --tolerance 1e-3 (then compare its vectors)")
    return {"max_abs_diff": worst, "tolerance": tol, "rows": [len(r) for r in rows], "paddings": ["right", "left"]}


def load_encoder_gguf(path):
    """An embedding encoder GGUF of any of ``ENCODER_ARCHITECTURES`` -> a ``gguf_bert.BertGGUF`` (its model,
    tokenizer, pooling, special ids): ``load_bert_gguf`` or ``nomic_bert.load_nomic_bert_gguf``, by ``general.architecture``."""
    from .gguf_bert import ENCODER_ARCHITECTURES, load_bert_gguf
    from .gguf_reader import field_value, gguf_reader

    arch = field_value(gguf_reader(path), "general.architecture")
    if arch == "nomic-bert":
        from .nomic_bert import load_nomic_bert_gguf

        return load_nomic_bert_gguf(path)
    if arch == "bert":
        return load_bert_gguf(path)
    raise ExportError(f"{path}: general.architecture is {arch!r}, not one of the embedding encoders onnxlm exports "
                      f"({', '.join(ENCODER_ARCHITECTURES)})")


def export_encoder_gguf(gguf_path, out_dir: Path, *, force: bool = False, tolerance: float | None = None,
                        validate: bool = True, progress: bool = True) -> Path:
    """A ``bert`` / ``nomic-bert`` GGUF -> the artifact directory ``out_dir`` (see the module doc), written
    atomically."""

    if tolerance is not None and not (float(tolerance) > 0):
        raise ExportError(f"tolerance: must be a positive number, got {tolerance!r}")
    t0 = time.perf_counter()
    g = load_encoder_gguf(gguf_path)
    _log(progress, f"loaded {gguf_path} ({time.perf_counter() - t0:.1f}s)")
    model, cfg = g.model, g.model.config
    tmp = temp_dir_beside(out_dir, "tmp")
    try:
        head = getattr(g, "head", None)
        _export_graph(model, tmp / "model.onnx", head)
        validation = validate_encoder(model, tmp / "model.onnx", tolerance, head) if validate else None
        if validation:
            _log(progress, f"validated: max |onnxruntime - PyTorch| = {validation['max_abs_diff']:.2e}")
        g.tokenizer.save(str(tmp / "tokenizer.json"))
        cfg.to_json_file(str(tmp / "config.json"))
        io = graph_io(tmp / "model.onnx")
        outputs = ["last_hidden_state"] + (["rank_scores"] if head else [])
        if tuple(io["inputs"]) != INPUTS or io["outputs"] != outputs:
            raise ExportError(f"the exported encoder's inputs/outputs are {io}, expected {INPUTS} -> {outputs}")
        write_manifest(tmp, {
            "kind": KIND,
            "model_type": cfg.model_type,
            "graphs": {"encoder": {"file": "model.onnx", **io}},
            "num_layers": cfg.num_hidden_layers,
            "num_heads": cfg.num_attention_heads,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads,
            "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size,
            "max_positions": cfg.max_position_embeddings,
            "special_tokens": g.special_tokens,
            "dtype": "float32",
            "opset": OPSET,
            "versions": versions(),
            "validation": validation,
            "source": source_record(str(Path(gguf_path).expanduser().absolute())),
            "pooling": g.pooling,
            **({"rank": g.rank} if head else {}),
        })
        move_into_place(tmp, out_dir, force)
    except BaseException:
        remove_tree(tmp)
        raise
    _log(progress, f"wrote {out_dir}")
    return out_dir
