"""`onnxlm generate` and `onnxlm chat`: text generation from the command line."""
from __future__ import annotations

import json
import sys

import numpy as np
from tqdm import tqdm

from onnxlm.runtime.errors import InputError, ModelFileError, ParameterError
from onnxlm.runtime.reasoning import FORMATS, prompt_opens, split, wanted

from .args import (add_generation_args, add_model_args, add_prompt_args, check_params_early, command_parser,
                   flag_error, flagged_artifact, generation_params, load_model, positive_int, read_line, read_prompts,
                   template_variables)
from .chat_reply import ReplyPrinter
from .errors import error_line
from .jobs import add_job_args, run_job, wants_job

GENERATE_DESCRIPTION = """\
Generate a continuation for each prompt with an exported model (numpy + onnxruntime, no torch).

Generation flags use transformers' GenerationConfig names; flags you do not give keep the values of the
model's generation_config.json (greedy search; 20 new tokens when that file sets no length, as transformers).

examples:
  onnxlm generate models/gpt2 "The meaning of life is" --max-new-tokens 30
  onnxlm generate models/gpt2 "Once upon a time" --do-sample --seed 0 --top-p 0.9 --stream
  onnxlm generate models/t5 "translate English to German: Hello" --num-beams 4 --json
  onnxlm generate models/gpt2 --file prompts.txt --json > out.jsonl
  echo "Hello" | onnxlm generate models/gpt2 --show-top-k 5
  onnxlm generate models/gpt2 --input prompts.jsonl --output out.parquet --max-new-tokens 30
  onnxlm generate models/smollm2 "A person as JSON:" --json-schema person.schema.json --max-new-tokens 80
  onnxlm generate models/smollm2 "Today's date:" --regex "[0-9]{4}-[0-9]{2}-[0-9]{2}"
  onnxlm generate models/smollm2 "Is water wet? Answer:" --choices " yes, no"
"""

CHAT_DESCRIPTION = """\
Chat with a model through its chat template (chat_template.jinja in the artifact).

With MESSAGE: answer it once and exit. Without: an interactive conversation on stdin, one user message per line,
history kept until EOF (Ctrl-D). In the conversation, `/reset` clears the history and `/exit` quits.
A thinking model's <think> block (Qwen3, DeepSeek-R1's distills) goes to stderr apart from the answer on stdout, and
the history keeps only the answer (--reasoning-format, --hide-reasoning).

examples:
  onnxlm chat models/smollm2 "What is ONNX?" --system "Answer in one sentence."
  onnxlm chat models/smollm2 --do-sample --temperature 0.7
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "generate", help="generate text from prompts", description=GENERATE_DESCRIPTION)
    add_model_args(p)
    add_prompt_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--chat", action="store_true",
                     help="wrap each prompt as a user message and apply the model's chat template")
    out.add_argument("--system", metavar="TEXT", help="with --chat: a system message placed before each prompt")
    out.add_argument("--chat-template-kwargs", type=template_variables, metavar="JSON", default=None,
                     help='with --chat: extra chat-template variables as a JSON object, e.g. \'{"enable_thinking": '
                          'false}\' (Qwen3)')
    out.add_argument("--json", action="store_true",
                     help='one JSON object per line and returned sequence: {"prompt", "text", "token_ids", '
                          '"finish_reason", "sequences_score" (beam search), ...}')
    out.add_argument("--stream", action="store_true",
                     help="print the text while it is generated (greedy and sampling only)")
    out.add_argument("--show-top-k", type=positive_int, metavar="K",
                     help="print the K most likely next tokens after each prompt before generating")
    add_constraint_args(p)
    add_generation_args(p)
    add_assistant_arg(p)
    add_job_args(p, "generate")
    p.set_defaults(func=run_generate)

    c = command_parser(sub, "chat", help="chat through the model's chat template (one-shot or interactive)",
                       description=CHAT_DESCRIPTION)
    add_model_args(c)
    c.add_argument("message", nargs="?", metavar="MESSAGE", help="a single user message (omit for a conversation)")
    c.add_argument("--system", metavar="TEXT", help="a system message that opens the conversation")
    c.add_argument("--chat-template-kwargs", type=template_variables, metavar="JSON", default=None,
                   help='extra chat-template variables as a JSON object, e.g. \'{"enable_thinking": false}\' (Qwen3)')
    c.add_argument("--json", action="store_true",
                   help="one-shot: print the reply as a JSON object (a split-off reasoning as reasoning_content)")
    c.add_argument("--reasoning-format", choices=FORMATS, default="auto",
                   help="a thinking model's <think> block: auto (the default) splits it off where the chat template "
                        "writes <think> (Qwen3, DeepSeek-R1's distills), deepseek always, none never. Split off, the "
                        "reasoning goes to stderr (dim on a terminal) and the answer to stdout; the conversation "
                        "keeps only the answer")
    c.add_argument("--hide-reasoning", action="store_true", help="do not print a split-off reasoning")
    c.add_argument("--no-stream", dest="stream", action="store_false",
                   help="print each reply only once it is complete (default: stream greedy/sampling replies)")
    add_constraint_args(c)
    add_generation_args(c, {"--num-return-sequences": "1 only: chat keeps one reply a turn (several replies to one "
                                                      "message: onnxlm generate --chat)"})
    add_assistant_arg(c)
    c.set_defaults(func=run_chat)


def add_assistant_arg(p) -> None:
    p.add_argument("--assistant", metavar="MODEL",
                   help="speculative decoding with a draft model: a smaller onnxlm artifact or .gguf file with the "
                        "same vocabulary (loaded with the same --provider/--threads); batch 1, same output")


def assistant_params(args) -> dict:
    """--assistant MODEL -> {"assistant_model": the loaded draft model}, or {}; its errors name --assistant."""
    if not getattr(args, "assistant", None):
        return {}
    from onnxlm.runtime import load
    from onnxlm.runtime.errors import OnnxlmError
    path = flagged_artifact(args.assistant, "--assistant")
    try:
        return {"assistant_model": load(path, provider=args.provider, threads=args.threads, verify=args.verify)}
    except OnnxlmError as exc:
        raise flag_error(exc, "--assistant") from None


def add_constraint_args(p) -> None:
    g = p.add_argument_group("structured output (needs the 'structured' extra: pip install 'onnxlm[structured]')")
    one = g.add_mutually_exclusive_group()
    one.add_argument("--json-schema", metavar="FILE",
                     help="the output is JSON matching the JSON Schema in FILE (compact: no free whitespace)")
    one.add_argument("--regex", metavar="PATTERN",
                     help="the output matches PATTERN (Rust regex syntax; \\d is any Unicode digit, [0-9] ASCII)")
    one.add_argument("--choices", metavar="A,B,C", help="the output is exactly one of these comma-separated strings")
    one.add_argument("--grammar", metavar="FILE",
                     help="the output follows the grammar in FILE (llguidance Lark syntax, or llama.cpp GBNF)")


def constraint_params(args) -> dict:
    """--json-schema FILE | --regex P | --choices A,B | --grammar FILE -> generate's constraint argument."""
    if getattr(args, "json_schema", None):
        text = _read_text(args.json_schema, "--json-schema")
        try:
            return {"json_schema": json.loads(text)}
        except ValueError as exc:
            args.parser_for_command.error(f"--json-schema {args.json_schema}: not valid JSON ({exc})")
    if getattr(args, "regex", None) is not None:
        return {"regex": args.regex}
    if getattr(args, "choices", None) is not None:
        choices = [c for c in args.choices.split(",") if c]
        if not choices:
            args.parser_for_command.error("--choices: give at least one non-empty choice, e.g. --choices yes,no")
        return {"choices": choices}
    if getattr(args, "grammar", None):
        return {"grammar": _read_text(args.grammar, "--grammar")}
    return {}


def _read_text(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:  # the flag's file is missing or unreadable: name the flag
        raise InputError(f"{flag} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{flag} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


# ---------------------------------------------------------------------------------------------------- generate
def run_generate(args) -> int:
    if args.stream and args.json:
        args.parser_for_command.error("--stream and --json cannot be combined")
    if (args.system is not None or args.chat_template_kwargs is not None) and not args.chat:
        args.parser_for_command.error(f"{'--system' if args.system is not None else '--chat-template-kwargs'} "
                                      "needs --chat")
    params = {**generation_params(args), **constraint_params(args)}
    if wants_job(args):
        if args.assistant:
            args.parser_for_command.error("--assistant runs in onnxlm generate itself, not in a --input job")
        if args.stream or args.json or args.show_top_k:
            args.parser_for_command.error("--input writes Parquet: --stream, --json and --show-top-k do not apply")
        return run_job(args, "generate", params=params, chat=args.chat, system=args.system,
                       chat_template_kwargs=args.chat_template_kwargs or {})
    if args.stream and (params.get("num_beams", 1) > 1 or params.get("num_return_sequences", 1) > 1):
        args.parser_for_command.error("--stream prints one sequence per prompt: it cannot be combined with "
                                      "--num-beams > 1 or --num-return-sequences > 1")
    prompts = read_prompts(args)
    check_params_early(args, params)  # before a first run's export, not after it
    if args.chat:
        _refuse_a_gguf_file_without_template(args.model_dir, "drop --chat")
    model = load_model(args)
    params.update(assistant_params(args))
    many = len(prompts) > 1
    # a progress bar (stderr) over many prompts when the results go to a file or pipe
    bar = tqdm(prompts, desc="generating", unit="prompt", file=sys.stderr, disable=not many or sys.stdout.isatty())
    for i, prompt in enumerate(bar):
        model_input = prompt
        if args.chat:  # token ids, encoded without special tokens (the template writes any BOS)
            model_input = [model.render_chat(_messages(prompt, args.system), tokenize=True,
                                             **(args.chat_template_kwargs or {}))]
        dist = model.next_token_distribution(model_input, top_k=args.show_top_k) if args.show_top_k else None
        call = _seeded(params, i)
        if args.json:
            res = model.generate(model_input, **call)
            for record in _records(model, prompt, res, dist):
                print(json.dumps(record), flush=True)
            continue
        if many:
            print(f"{'' if i == 0 else chr(10)}=== prompt {i + 1}/{len(prompts)}: {prompt!r}", flush=True)
        if dist is not None:
            print(f"top-{args.show_top_k} next tokens:\n{dist.table()}\n", flush=True)
        if args.stream:
            reason = _stream_one(model, model_input, call)
            _print_footer(reason)
        else:
            res = model.generate(model_input, **call)
            _print_result(res, bool(params.get("output_scores")), model)
    bar.close()
    return 0


def _seeded(params: dict, i: int) -> dict:
    """Prompt i samples with --seed + i, as a batch job's row i does (onnxlm/jobs/tasks.py): the same prompt
    list gives the same texts either way, and two prompts never share their draws."""
    return params if params.get("seed") is None else {**params, "seed": params["seed"] + i}


def _messages(prompt: str, system: str | None, history: list[dict] | None = None) -> list[dict]:
    # --system "" is a system message, empty: it replaces a template's default one (SmolLM2's "You are ...")
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + list(history or []) + [{"role": "user", "content": prompt}]


def _stream_one(model, model_input, params: dict, out: ReplyPrinter | None = None) -> str | None:
    """Stream one prompt's reply into ``out`` (default: all of it to stdout), closed at the end; returns the finish
    reason. Closing the stream stops decoding."""
    out = out or ReplyPrinter(None)
    reason, failed = None, True
    steps = model.stream(model_input, **params)
    try:
        for step in steps:
            if step.batch_index != 0:  # a generation_config.json asking for several samples: show the first
                continue
            if step.text:
                out.write(step.text)
            if step.is_last:
                reason = step.finish_reason
        failed = False
    finally:  # also on Ctrl-C: the terminal's dim reasoning is reset and the line ended
        steps.close()
        out.close(failed=failed)
    return reason


def _print_footer(reason: str | None) -> None:
    if reason:
        print(f"[finish: {reason}]", file=sys.stderr)


def _print_result(res, show_scores: bool, model) -> None:
    n = len(res.text)
    for j, text in enumerate(res.text):
        if n > 1:
            extra = f", score {float(res.sequences_scores[j]):.4f}" if res.sequences_scores is not None else ""
            print(f"--- sequence {j + 1}/{n} (finish: {res.finish_reasons[j]}{extra})")
        print(text, flush=True)
        if show_scores:
            lps = _token_logprobs(res, j)
            if lps is not None:
                ids = res.new_tokens[j] if res.new_tokens else []
                print(_token_table(model, ids, lps))
        if res.constraint_satisfied is not None and res.constraint_satisfied[j] is False:
            print(f"[sequence {j + 1}: the output is incomplete: it does not match the whole constraint "
                  f"(finish: {res.finish_reasons[j]}); raise --max-new-tokens]", file=sys.stderr)
    if n == 1:
        _print_footer(res.finish_reasons[0])


def _token_logprobs(res, row: int) -> list[float] | None:
    """Per step, the chosen token's log-probability: greedy/sampling, the log-softmax of the processed scores; beam
    search, its beam's processed log-probability (the scores along beam_indices, as transformers'
    ``compute_transition_scores``: they sum to the sequence score times its length ** length_penalty)."""
    if not res.scores or not res.new_tokens:
        return None
    if res.beam_indices is not None:
        path = res.beam_indices[row]
        return [float(res.scores[step][path[step], tok]) for step, tok in enumerate(res.new_tokens[row])
                if step < len(res.scores) and step < len(path) and path[step] >= 0]
    out = []
    for step, tok in enumerate(res.new_tokens[row]):
        if step >= len(res.scores):
            break
        s = res.scores[step][row].astype(np.float64)
        m = np.max(s[np.isfinite(s)]) if np.isfinite(s).any() else 0.0
        lse = m + np.log(np.sum(np.exp(s - m)))
        out.append(float(s[tok] - lse))
    return out


def _token_table(model, ids: list[int], logprobs: list[float]) -> str:
    lines = [f"  {'token':<20} {'id':>7}  logprob"]
    for tid, lp in zip(ids, logprobs):
        tok = model.tokenizer.decode([tid], skip_special_tokens=False) if model.tokenizer else str(tid)
        lines.append(f"  {tok!r:<20} {tid:>7}  {lp:.4f}")
    return "\n".join(lines)


def _records(model, prompt: str, res, dist) -> list[dict]:
    records = []
    n = len(res.text)
    for j, text in enumerate(res.text):
        rec = {"prompt": prompt, "text": text,
               "token_ids": [int(t) for t in (res.new_tokens[j] if res.new_tokens else [])],
               "finish_reason": res.finish_reasons[j]}
        if n > 1:
            rec["index"] = j
        if res.sequences_scores is not None:
            rec["sequences_score"] = float(res.sequences_scores[j])
        if res.constraint_satisfied is not None:
            rec["constraint_satisfied"] = res.constraint_satisfied[j]
        lps = _token_logprobs(res, j)
        if lps is not None:
            rec["token_logprobs"] = lps
        if dist is not None:
            rec["top_k"] = [{"token": t, "id": int(i), "prob": float(p)}
                            for t, i, p in zip(dist.tokens, dist.token_ids, dist.probs)]
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------------- chat
def run_chat(args) -> int:
    params = {**generation_params(args), **constraint_params(args)}
    if params.get("num_return_sequences", 1) > 1:  # a conversation keeps one reply a turn
        args.parser_for_command.error("--num-return-sequences: chat keeps one reply a turn; for several replies "
                                      "to one message use onnxlm generate --chat")
    stream = args.stream and not args.json and params.get("num_beams", 1) == 1 and not params.get("output_scores")
    if args.message is not None and not args.message.strip():  # these before a first run's export, not after it
        args.parser_for_command.error("MESSAGE is empty")
    if args.message is None and args.json:
        args.parser_for_command.error("--json needs a MESSAGE (one-shot chat)")
    check_params_early(args, params)
    _refuse_a_gguf_file_without_template(args.model_dir)
    model = load_model(args)
    _refuse_a_gguf_without_template(model, args.model_dir)
    params.update(assistant_params(args))
    if args.message is not None:
        _chat_turn(model, _messages(args.message, args.system), params, args, stream=stream, as_json=args.json,
                   message=args.message)
        return 0
    if not model.chat_template:  # fail before waiting for input
        model.render_chat([{"role": "user", "content": "x"}])
    return _repl(model, args, params, stream)


def _no_template(given: str, instead: str) -> ModelFileError:
    return ModelFileError(f"{given} has no chat template (its metadata holds no tokenizer.chat_template: a base "
                          f"model?); {instead} for plain continuations", str(given))


def _refuse_a_gguf_file_without_template(given: str, instead: str = "use onnxlm generate") -> None:
    """A .gguf file whose header holds no tokenizer.chat_template: refused from the header, before its first run
    exports it (minutes) only to find no template. ``instead``: what the message proposes (generate --chat: drop
    --chat)."""
    from pathlib import Path

    from onnxlm.runtime.gguf_magic import is_gguf_file

    if not is_gguf_file(Path(given).expanduser()):
        return
    from onnxlm.export.gguf_reader import gguf_reader

    if "tokenizer.chat_template" not in gguf_reader(Path(given).expanduser()).fields:
        raise _no_template(given, instead)


def _refuse_a_gguf_without_template(model, given: str) -> None:
    """A .gguf file run through its cached artifact: a missing template is the file's (a base model), said so."""
    from onnxlm.runtime.gguf_magic import is_gguf_file

    if not model.chat_template and is_gguf_file(given):
        raise _no_template(given, "use onnxlm generate")


def _chat_turn(model, messages: list[dict], params: dict, args, *, stream: bool, as_json: bool = False,
               message: str = "") -> str:
    """One reply, streamed or whole, a thinking model's reasoning apart from its answer (--reasoning-format,
    chat_reply.py) -> the answer, which the conversation keeps."""
    ids = model.render_chat(messages, tokenize=True, **(args.chat_template_kwargs or {}))
    # None: no split; else whether the prompt leaves a <think> block open (the reply begins inside it)
    think = prompt_opens(model.tokenizer, ids) if wanted(args.reasoning_format, model.chat_template) else None
    printer = ReplyPrinter(think, hide=args.hide_reasoning)
    gen_params = {k: v for k, v in params.items()
                  if k not in ("json_schema", "regex", "choices", "grammar", "assistant_model")}
    if stream and model.generation_config.replace(**gen_params).num_beams <= 1:
        _stream_one(model, [ids], params, out=printer)
        return printer.answer
    res = model.generate([ids], **params)
    if as_json:
        rec = _records(model, message, res, None)[0]
        reasoning, rec["text"] = (None, res.text[0]) if think is None else split(res.text[0], think)
        if reasoning is not None:
            rec["reasoning_content"] = reasoning
        rec["messages"] = messages
        print(json.dumps(rec), flush=True)
        return rec["text"]
    printer.write(res.text[0])
    printer.close()
    lps = _token_logprobs(res, 0) if params.get("output_scores") else None
    if lps is not None:  # --output-scores: as generate shows them, after the reply
        print(_token_table(model, res.new_tokens[0], lps), flush=True)
    return printer.answer


def _repl(model, args, params: dict, stream: bool) -> int:
    """The conversation on stdin, a message a line. A message the model refuses (past its context, ...) is one
    error line and leaves the history as it was; the session goes on, and ends with status 1 if any was refused."""
    if sys.stdin is None:  # stdin closed (`<&-`): no conversation to read
        return 0
    interactive = sys.stdin.isatty()
    refused = False
    history: list[dict] = []
    if interactive:
        print("onnxlm chat: type a message and press Enter; /reset clears the history, /exit or Ctrl-D quits.",
              file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = read_line(sys.stdin)
        if not line:
            if interactive:
                sys.stderr.write("\n")
            return 1 if refused else 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 1 if refused else 0
        if text == "/reset":
            history.clear()
            print("[history cleared]", file=sys.stderr)
            continue
        if interactive:
            sys.stderr.write("assistant> ")
            sys.stderr.flush()
        try:
            reply = _chat_turn(model, _messages(text, args.system, history), params, args, stream=stream)
        except (InputError, ParameterError) as exc:  # this message's fault: said, and the conversation goes on
            print(error_line(str(exc)), file=sys.stderr, flush=True)
            refused = True
            continue
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
