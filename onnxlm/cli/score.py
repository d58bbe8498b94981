"""`onnxlm score`: log-probabilities of given texts under a model."""
from __future__ import annotations

import json
import math
import sys

from tqdm import tqdm

from .args import add_model_args, add_prompt_args, command_parser, load_model, positive_int, read_prompts
from .jobs import add_job_args, run_job, wants_job

DESCRIPTION = """\
Score texts: the log-probability of every token given the tokens before it, and their sum.

Decoder-only models score each TEXT (every token but the first; --prepend-bos scores the first too).
Encoder-decoder models (T5) score log p(TARGET | TEXT): give one --target per TEXT.

examples:
  onnxlm score models/gpt2 "The cat sat on the mat." "The mat sat on the cat."
  onnxlm score models/t5 "translate English to German: Hello" --target "Hallo" --json
  onnxlm score models/gpt2 --input data.jsonl --output scores.parquet
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "score", help="per-token log-probabilities of texts", description=DESCRIPTION)
    add_model_args(p)
    add_prompt_args(p, name="TEXT", what="text")
    p.add_argument("--target", action="append", metavar="T",
                   help="encoder-decoder models: the target text scored given TEXT (repeatable, one per TEXT)")
    p.add_argument("--prepend-bos", action="store_true", help="put BOS before each text so its first token is scored")
    p.add_argument("--append-eos", action="store_true", help="append EOS to each text (target) and score it")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="texts scored per forward pass (default: 8); a progress bar shows on stderr for many texts")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per text: {"text", "target"?, "tokens", "token_ids", "token_logprobs", '
                        '"sequence_logprob", "num_tokens", "perplexity"}')
    add_job_args(p, "score")
    p.set_defaults(func=run)


def run(args) -> int:
    if wants_job(args):
        if args.target is not None or args.json:
            args.parser_for_command.error("--input takes targets from --target-column and writes Parquet: "
                                          "--target and --json do not apply")
        return run_job(args, "score", prepend_bos=args.prepend_bos, append_eos=args.append_eos,
                       target_column=args.target_column)
    texts = read_prompts(args, what="text")
    targets = args.target
    if targets is not None and len(targets) != len(texts):
        args.parser_for_command.error(f"{len(targets)} --target for {len(texts)} texts: give one per text")
    model = load_model(args)
    bar = tqdm(total=len(texts), desc="scoring", unit="text", file=sys.stderr, disable=len(texts) <= args.batch_size)
    for start in range(0, len(texts), args.batch_size):  # bounded batches: a long file never becomes one batch
        chunk = slice(start, start + args.batch_size)
        res = model.score(texts[chunk], targets=targets[chunk] if targets is not None else None,
                          prepend_bos=args.prepend_bos, append_eos=args.append_eos)
        bar.update(len(res.tokens))
        with bar.external_write_mode():
            _print_chunk(args, model, texts[chunk], targets[chunk] if targets is not None else None, res, start)
    bar.close()
    return 0


def _print_chunk(args, model, texts, targets, res, offset: int) -> None:
    for i, text in enumerate(texts):
        ids = [int(t) for t in res.tokens[i]]
        lps = [float(x) for x in res.token_logprobs[i]]
        total = float(res.sequence_logprobs[i])
        ppl = math.exp(-total / len(lps)) if lps else float("nan")
        pieces = [_piece(model, t) for t in ids]
        if args.json:
            rec = {"text": text}
            if targets is not None:
                rec["target"] = targets[i]
            rec.update(tokens=pieces, token_ids=ids, token_logprobs=lps, sequence_logprob=total, num_tokens=len(lps),
                       perplexity=ppl)
            print(json.dumps(rec), flush=True)
            continue
        if i + offset:
            print()
        head = f"=== {text!r}" + (f" -> {targets[i]!r}" if targets is not None else "")
        print(head)
        print(f"total log-prob {total:.4f} over {len(lps)} tokens (mean {total / max(len(lps), 1):.4f}, "
              f"perplexity {ppl:.3f})")
        print(f"  {'token':<20} {'id':>7}  logprob")
        for piece, tid, lp in zip(pieces, ids, lps):
            print(f"  {piece!r:<20} {tid:>7}  {lp:.4f}")


def _piece(model, token_id: int) -> str:
    if model.tokenizer is None:
        return str(token_id)
    return model.tokenizer.decode([token_id], skip_special_tokens=False)
