"""llama.cpp's POST /infill prompt: fill-in-the-middle for code completion (llama.vim, llama.vscode), built as
llama.cpp's server builds it (``format_infill``, the repo-level pattern of Qwen2.5-Coder's report):

    [FIM_REP]myproject\\n [FIM_SEP]filename\\n extra chunk ... [FIM_SEP]filename\\n
    [BOS] [FIM_PRE] prefix prompt [FIM_SUF] suffix [FIM_MID]

``input_prefix`` keeps its last 3/4 of ``n_batch`` tokens, ``input_suffix`` its first ``n_batch/4 - 2 - len(prompt)``,
the extra chunks (``input_extra``: [{"text", "filename"}], joined by "--- snippet ---" where the vocabulary has no
file separator) the last ones that fit ``n_ctx - n_batch - 2 * n_predict`` (llama.cpp's server defaults: n_batch
2048, n_predict -1). The prefix, suffix and chunks are tokenized without special tokens and with special-token
strings read as text; ``prompt`` (the start of the middle the client already has) with special-token strings read.

The FIM tokens are found by their text, as llama.cpp's vocabulary loader finds them where a GGUF file's metadata
does not name them (Qwen's ``<|fim_prefix|>``, StarCoder/Granite's ``<fim_prefix>``, DeepSeek's, CodeLlama's
``<PRE>``...); a model without prefix, suffix and middle tokens cannot infill (400 ``infill_not_supported``). Its
FIM pad, repo and file-separator tokens, and the end-of-turn tokens llama.cpp finds by their text, end generation
on every llama.cpp endpoint (``end_of_generation_ids``), as they are among llama.cpp's end-of-generation ids.
"""
from __future__ import annotations

from .protocol import _is_int, bad, check_text

N_BATCH = 2048  # llama.cpp's server default batch: the prefix/suffix budget
N_PREDICT = -1  # llama.cpp's server default n_predict, which its extra-chunk budget reads
SNIPPET = "\n\n--- snippet ---\n\n"  # llama.cpp's chunk separator without a file-separator token

#: FIM role -> the token texts llama.cpp's vocabulary loader recognizes (llama-vocab.cpp)
FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
KEYS = {"input_prefix", "input_suffix", "input_extra"}


def fim_tokens(tokenizer) -> dict[str, int]:
    """A tokenizer's FIM token ids by role ("pre", "suf", "mid", "pad", "rep", "sep"), those it has."""
    out = {}
    for role, texts in FIM_TEXTS.items():
        for text in texts:
            i = tokenizer.token_to_id(text)
            if i is not None:
                out[role] = int(i)
                break
    return out


def _text_or_mixed(body: dict, name: str):
    v = body.get(name)
    if v is None:
        raise bad(name, "required: the code before (input_prefix) / after (input_suffix) the cursor, a string")
    if isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) or _is_int(x) for x in v)):
        check_text([x for x in ([v] if isinstance(v, str) else v) if isinstance(x, str)], name)
        return v
    raise bad(name, "expected a string (or token ids and strings mixed)")


def check(body: dict) -> list[dict]:
    """An /infill body's own fields, checked (400 naming them) -> its extra chunks [{"text", "filename"}]."""
    _text_or_mixed(body, "input_prefix")
    _text_or_mixed(body, "input_suffix")
    if body.get("prompt") is not None and not isinstance(body["prompt"], str):
        raise bad("prompt", "expected a string: the start of the middle part the client already has")
    check_text([body.get("prompt") or ""], "prompt")
    extra = body.get("input_extra")
    if extra is None:
        return []
    if not isinstance(extra, list):
        raise bad("input_extra", 'expected an array of {"filename": string, "text": string}')
    for k, chunk in enumerate(extra):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise bad("input_extra", f"chunk {k} must be an object with a \"text\" string")
        if "filename" in chunk and not isinstance(chunk["filename"], str):
            raise bad("input_extra", f"chunk {k}'s \"filename\" must be a string")
        check_text([chunk["text"], chunk.get("filename", "")], "input_extra")
    return extra


def infill_ids(model, body: dict, extra: list[dict]) -> list[int]:
    """A checked /infill body -> the prompt ids."""
    tok = model.tokenizer
    if tok is None:
        raise bad("input_prefix", "this model has no tokenizer.json: it cannot build a fill-in-the-middle prompt",
                  code="infill_not_supported")
    fim = fim_tokens(tok)
    missing = [f"{name} token is missing." for role, name in (("pre", "prefix"), ("suf", "suffix"),
                                                              ("mid", "middle")) if role not in fim]
    if missing:
        raise bad(None, f"infill is not supported by this model: {' '.join(missing)}", code="infill_not_supported")

    def text(s: str) -> list[int]:  # no special tokens added, none read from the text (llama.cpp's false, false)
        return tok.encode(s, add_special_tokens=False, split_special_tokens=True) if s else []

    def mixed(v) -> list[int]:
        parts = [v] if isinstance(v, str) else v
        return [i for p in parts for i in (text(p) if isinstance(p, str) else [int(p)])]

    prefix, suffix = mixed(body["input_prefix"]), mixed(body["input_suffix"])
    prompt = tok.encode(body["prompt"], add_special_tokens=False) if body.get("prompt") else []
    for name, ids in (("input_prefix", prefix), ("input_suffix", suffix)):
        wrong = sorted({i for i in ids if not 0 <= i < model.vocab_size})
        if wrong:
            raise bad(name, f"token ids {wrong[:10]} are out of range; allowed: 0 <= id < {model.vocab_size}")
    extra_ids: list[int] = []
    if "rep" in fim:
        extra_ids += [fim["rep"]] + text("myproject\n")
    for chunk in extra:
        if "sep" in fim:
            extra_ids += [fim["sep"]] + text(chunk.get("filename", "tmp") + "\n")  # "" stays "", as llama.cpp
        else:
            extra_ids += text(SNIPPET)
        extra_ids += text(chunk["text"])
    if "sep" in fim:
        extra_ids += [fim["sep"]] + text("filename\n")
    n_prefix = min(len(prefix), 3 * (N_BATCH // 4))
    n_suffix = min(len(suffix), max(0, N_BATCH // 4 - (2 + len(prompt))))
    ctx = model.max_positions or 0
    n_extra = min(max(0, ctx - N_BATCH - 2 * N_PREDICT), len(extra_ids))
    ids = [fim["pre"]] + prefix[len(prefix) - n_prefix:] + prompt
    ids = _bos(tok) + ids
    ids = (extra_ids[len(extra_ids) - n_extra:] if n_extra else []) + ids
    ids += [fim["suf"]] + suffix[:n_suffix] + [fim["mid"]]
    return ids


#: end-of-turn tokens llama.cpp's vocabulary loader counts as end of generation by their text (llama-vocab.cpp)
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
             "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>")


def end_of_generation_ids(model) -> list[int]:
    """The ids that end generation on llama.cpp's endpoints, as llama.cpp's vocabulary sets them: the model's own,
    its FIM pad, repo and file-separator tokens, and the end-of-turn tokens found by their text (gpt-oss's
    ``<|end|>`` left out beside ``<|return|>`` and ``<|call|>``, as llama.cpp leaves it out)."""
    eos = list(model.generation_config.eos_token_ids or [])
    tok = model.tokenizer
    if tok is None:
        return eos
    fim = fim_tokens(tok)
    found = {text: tok.token_to_id(text) for text in EOT_TEXTS}
    if all(found[t] is not None for t in ("<|return|>", "<|call|>", "<|end|>")):
        found["<|end|>"] = None
    more = [fim[r] for r in ("pad", "rep", "sep") if r in fim] + [int(i) for i in found.values() if i is not None]
    return eos + sorted({i for i in more if i not in eos and 0 <= i < model.vocab_size})


def infill_vocab(model, eog: list[int]):
    """The vocabulary as llama.cpp's infill sampler reads it (``llama_samplers.InfillVocab``): each token's bytes
    without special-token text (``token_to_piece(..., special=false)``: b"" for a special token; a byte-level or
    byte-fallback token's own bytes where it holds part of a character), cached on the model; the end-of-generation
    ids ``eog``; the end-of-turn token (the first of EOT_TEXTS the vocabulary holds, else the first of ``eog``)."""
    from onnxlm.runtime.llama_samplers import InfillVocab

    from .choices import token_bytes
    cache = model.__dict__.setdefault("_infill_pieces", {})
    tok = model.tokenizer

    def piece(i: int) -> bytes:
        if i not in cache:
            special = tok is not None and tok.decode([i], skip_special_tokens=True) == ""
            cache[i] = b"" if special else bytes(token_bytes(model, i))
        return cache[i]

    found = [tok.token_to_id(t) for t in EOT_TEXTS] if tok is not None else []
    eot = next((int(i) for i in found if i is not None), eog[0] if eog else 0)
    return InfillVocab(piece=piece, eog=frozenset(int(i) for i in eog), eot=eot)


def _bos(tok) -> list[int]:
    """The special tokens the tokenizer puts before a text (a BOS), as llama.cpp adds one where add_bos is set."""
    plain = tok.encode("a", add_special_tokens=False)
    full = tok.encode("a", add_special_tokens=True)
    return full[:len(full) - len(plain)] if full[len(full) - len(plain):] == plain else []
