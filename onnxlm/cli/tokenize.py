"""`onnxlm tokenize`: the token ids a model reads for a text (or the text of ids), from its tokenizer alone."""
from __future__ import annotations

import json
import sys
from onnxlm.runtime.tokenizer import TextTokenizer

from .args import add_prompt_args, command_parser, given_model, int_list, read_prompts

DESCRIPTION = """\
Print the token ids a model reads for each TEXT, as generate and score encode it, one `id -> 'piece'` line per
token (llama.cpp's llama-tokenize prints the same), or with --ids one JSON list per text. Only the tokenizer is
loaded: an artifact's tokenizer.json, or a .gguf file's vocabulary (its cached artifact's when it was run
before, else built from the file's metadata: needs the gguf package of the export extra, not torch, and exports
nothing).

examples:
  onnxlm tokenize models/smollm2-135m-instruct "The capital of France is Paris."
  onnxlm tokenize gemma-3-270m-q4_k_m.gguf "The capital of France is Paris." --ids
  onnxlm tokenize models/gpt2 --decode 464,3139,286,4881
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "tokenize", help="the token ids of texts (or the text of ids)", description=DESCRIPTION)
    p.add_argument("model_dir", metavar="MODEL",
                   help="an artifact directory (onnxlm export ...) or a .gguf file (nothing is exported)")
    add_prompt_args(p, name="TEXT", what="text")
    p.add_argument("--ids", action="store_true", help="print each text's ids as one JSON list")
    p.add_argument("--no-special-tokens", dest="add_special_tokens", action="store_false",
                   help="add none of the tokenizer's own special tokens (e.g. BOS) around the text")
    p.add_argument("--no-parse-special", dest="parse_special", action="store_false",
                   help="read special-token strings in the text (e.g. '<|im_end|>') as plain text, not as those "
                        "tokens (llama.cpp's --no-parse-special)")
    p.add_argument("--decode", type=int_list, metavar="IDS",
                   help="print the text of these comma-separated ids instead (special tokens kept)")
    p.set_defaults(func=run)


def load_tokenizer(model: str) -> TextTokenizer:
    """MODEL -> its tokenizer: an artifact's tokenizer.json, or a GGUF's (its cached artifact's, else built from
    the file's metadata)."""
    path, gguf = given_model(model)  # the errors of every command's MODEL_DIR
    if gguf:
        from onnxlm.export.gguf_artifact import cached_artifact

        cached = cached_artifact(path)
        if cached is not None:
            return TextTokenizer.from_file(cached / "tokenizer.json")
        from onnxlm.export.gguf import build_tokenizer_from_gguf

        return TextTokenizer(build_tokenizer_from_gguf(path))
    return TextTokenizer.from_file(path / "tokenizer.json")


def run(args) -> int:
    if args.decode is not None:
        if args.texts or args.file:
            args.parser_for_command.error("--decode prints the text of ids: give no TEXT or --file with it")
        tok = load_tokenizer(args.model_dir)
        size = tok.tokenizer.get_vocab_size(with_added_tokens=True)
        wrong = [i for i in args.decode if not 0 <= i < size]
        if wrong:
            args.parser_for_command.error(f"--decode: ids {wrong[:20]} are out of range; allowed: 0 <= id < {size}")
        print(tok.decode(args.decode, skip_special_tokens=False))
        return 0
    texts = read_prompts(args, what="text")
    tok = load_tokenizer(args.model_dir)
    for k, text in enumerate(texts):
        ids = tok.encode(text, add_special_tokens=args.add_special_tokens, split_special_tokens=not args.parse_special)
        if args.ids:
            print(json.dumps(ids))
            continue
        if k:
            print()
        for i in ids:
            print(f"{i:>8} -> {tok.decode([i], skip_special_tokens=False)!r}")
    sys.stdout.flush()
    return 0
