"""A tiny nomic-bert embedding model (nomic-embed-text v1 / v1.5's architecture) as a GGUF file, laid out as
llama.cpp's converter (``convert_hf_to_gguf.py``, ``NomicBertModel``) writes nomic-embed-text: the inputs of
tests/test_gguf_nomic_bert.py and of tests/data/gguf_nomic_bert/make_reference.py, which stores llama.cpp's vectors
for them.

* the weights: ``hf_weights()``, seeded numpy arrays under nomic's own Hugging Face names
  (``embeddings.word_embeddings``, ``emb_ln``, ``encoder.layers.N.attn.Wqkv`` (q, k, v rows), ``attn.out_proj``,
  ``norm1``, ``mlp.fc11`` (up), ``mlp.fc12`` (gate: SiLU), ``mlp.fc2`` (down), ``norm2``), no biases but the
  LayerNorms' (nomic's ``qkv_proj_bias`` / ``mlp_fc1_bias`` / ``mlp_fc2_bias`` are false); gguf-py's name map for
  NOMIC_BERT turns each into the GGUF tensor, as the converter does;
* the vocabulary: tests/gguf_bert.py's (3,000 WordPiece tokens in llama.cpp's phantom-space form, [CLS] / [SEP]
  special ids);
* the metadata: ``nomic-bert.*`` hyperparameters (``rope.freq_base`` nomic's ``rotary_emb_base`` 1000),
  ``nomic-bert.attention.causal`` false, ``nomic-bert.pooling_type`` (1 mean: nomic's; 2 cls),
  ``tokenizer.ggml.token_type_count`` 2.

Every matrix F32, or in a GGUF block type (``block_type="Q8_0"``: gguf-py's quantize; ``token_types`` kept F32 as
the converter keeps it). Seeded: the same call writes the same bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gguf_bert import POOLING, add_weight, add_wordpiece_vocab, finish, wordpiece_vocab

DATA = Path(__file__).resolve().parent / "data" / "gguf_nomic_bert"
CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
              max_position_embeddings=128, type_vocab_size=2, layer_norm_eps=1e-12, rope_theta=1000.0)
#: nomic-embed-text's head size (64) and context (2048), for a text of over a thousand tokens
LONG_CONFIG = dict(CONFIG, hidden_size=256, intermediate_size=512, max_position_embeddings=2048)
#: the files tests/data/gguf_nomic_bert/reference.json holds llama.cpp's results for: name -> the writer's keywords
REFERENCE_FILES = {"f32": {}, "q8_0": {"block_type": "Q8_0"}, "bias": {"attention_bias": True},
                   "long": {"config": LONG_CONFIG}}


def hf_weights(config: dict = CONFIG) -> dict[str, np.ndarray]:
    """nomic-bert's Hugging Face state dict (its names; [out, in] matrices), seeded: numpy generator 0. Scales chosen
    so attention is peaked (q . k of order 1) and every tensor, the rotary positions included, moves the output."""
    rng = np.random.default_rng(0)
    c = config
    D, F, V = c["hidden_size"], c["intermediate_size"], len(wordpiece_vocab())

    def normal(*shape, scale):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    w = {"embeddings.word_embeddings.weight": normal(V, D, scale=1.0),
         "embeddings.token_type_embeddings.weight": normal(c["type_vocab_size"], D, scale=0.5),
         "emb_ln.weight": 1.0 + normal(D, scale=0.1), "emb_ln.bias": normal(D, scale=0.1)}
    for i in range(c["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        w.update({p + "attn.Wqkv.weight": normal(3 * D, D, scale=0.2),
                  p + "attn.out_proj.weight": normal(D, D, scale=0.15),
                  p + "norm1.weight": 1.0 + normal(D, scale=0.1), p + "norm1.bias": normal(D, scale=0.1),
                  p + "mlp.fc11.weight": normal(F, D, scale=0.15), p + "mlp.fc12.weight": normal(F, D, scale=0.15),
                  p + "mlp.fc2.weight": normal(D, F, scale=0.15),
                  p + "norm2.weight": 1.0 + normal(D, scale=0.1), p + "norm2.bias": normal(D, scale=0.1)})
    return w


def attention_biases(config: dict = CONFIG) -> dict[str, np.ndarray]:
    """Seeded (numpy generator 1) ``attn.Wqkv.bias`` and ``attn.out_proj.bias`` for each block: a nomic-bert with
    ``qkv_proj_bias`` (none of nomic's own; llama.cpp's graph adds both where a file holds them)."""
    rng = np.random.default_rng(1)
    D = config["hidden_size"]
    out = {}
    for i in range(config["num_hidden_layers"]):
        out[f"encoder.layers.{i}.attn.Wqkv.bias"] = (0.3 * rng.standard_normal(3 * D)).astype(np.float32)
        out[f"encoder.layers.{i}.attn.out_proj.bias"] = (0.3 * rng.standard_normal(D)).astype(np.float32)
    return out


def gguf_weights(attention_bias: bool = False, config: dict = CONFIG) -> dict[str, np.ndarray]:
    """``hf_weights`` (and ``attention_biases``) under their GGUF names (gguf-py's NOMIC_BERT map: the
    converter's)."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.NOMIC_BERT, config["num_hidden_layers"])
    out = {}
    for key, array in {**hf_weights(config), **(attention_biases(config) if attention_bias else {})}.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise KeyError(key)
        out[name] = array
    return out


def write_tiny_nomic_bert_gguf(path: Path, pooling: str = "mean", block_type: str | None = None,
                               metadata: dict | None = None, tensors: dict | None = None,
                               attention_bias: bool = False, config: dict = CONFIG) -> str:
    """The tiny nomic-bert to ``path`` as llama.cpp's converter writes it -> the file's sha256. ``metadata``: full
    key -> bool / int / float / str written as well or instead (None: the key left out); ``tensors``: GGUF name ->
    array (None: left out) replacing or adding to the model's; ``attention_bias``: with ``attention_biases``;
    ``config``: ``CONFIG`` or ``LONG_CONFIG``."""
    import gguf

    c = config
    arch = "nomic-bert"
    extra = dict(metadata or {})
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-nomic-bert")

    def key(full: str, value, add) -> None:
        if full in extra:
            value = extra.pop(full)
            if value is None:
                return
        add(full, value)

    key(f"{arch}.context_length", c["max_position_embeddings"], w.add_uint32)
    key(f"{arch}.embedding_length", c["hidden_size"], w.add_uint32)
    key(f"{arch}.feed_forward_length", c["intermediate_size"], w.add_uint32)
    key(f"{arch}.block_count", c["num_hidden_layers"], w.add_uint32)
    key(f"{arch}.attention.head_count", c["num_attention_heads"], w.add_uint32)
    key(f"{arch}.attention.layer_norm_epsilon", c["layer_norm_eps"], w.add_float32)
    key(f"{arch}.rope.freq_base", c["rope_theta"], w.add_float32)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if block_type is None else gguf.LlamaFileType[f"MOSTLY_{block_type}"])
    key(f"{arch}.attention.causal", False, w.add_bool)
    key(f"{arch}.pooling_type", POOLING[pooling], w.add_uint32)
    key("tokenizer.ggml.token_type_count", c["type_vocab_size"], w.add_uint32)
    add_wordpiece_vocab(w)
    for full, value in extra.items():
        (w.add_bool if isinstance(value, bool) else w.add_uint32 if isinstance(value, int) else
         w.add_float32 if isinstance(value, float) else w.add_string)(full, value)
    weights = gguf_weights(attention_bias, config)
    for name, array in (tensors or {}).items():
        if array is None:
            weights.pop(name, None)
        else:
            weights[name] = np.asarray(array, np.float32)
    for name, array in weights.items():
        add_weight(w, name, array, block_type, keep_f32=name == "token_types.weight")
    return finish(w, path)


def tiny_nomic_bert(attention_bias: bool = False):
    """The tiny model as onnxlm's torch module (export/nomic_bert.py), built from ``gguf_weights`` directly (no GGUF
    file read), fp32, eval."""
    import torch

    from onnxlm.export.nomic_bert import NomicBertConfig, NomicBertModel

    config = NomicBertConfig(vocab_size=len(wordpiece_vocab()), qkv_bias=attention_bias,
                             attn_output_bias=attention_bias, **CONFIG)
    model = NomicBertModel(config)
    state = {("blocks." + k[4:] if k.startswith("blk.") else k): torch.from_numpy(v)
             for k, v in gguf_weights(attention_bias).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def write_reference_files(directory: Path) -> dict[str, tuple[str, str]]:
    """``REFERENCE_FILES`` written into ``directory`` -> {name: (path, sha256)}."""
    out = {}
    for name, kwargs in REFERENCE_FILES.items():
        path = Path(directory) / f"tiny-nomic-bert-{name}.gguf"
        out[name] = (str(path), write_tiny_nomic_bert_gguf(path, **kwargs))
    return out
