"""POST /tokenize and /detokenize, in vLLM's shapes (llama.cpp's server has the same pair): the ids the generation
endpoints feed the model for a prompt (as /v1/completions encodes it) or for chat messages (as
/v1/chat/completions renders them, tools included), and the text of ids.

/tokenize  {"prompt": str, "add_special_tokens": true, "return_token_strs": false}
           {"messages": [...], "tools": [...], "chat_template_kwargs": {...}, "return_token_strs": false}
        -> {"count", "max_model_len", "tokens", "token_strs"}   (token_strs: vocabulary pieces, or null)
/detokenize {"tokens": [int]} -> {"prompt": str}                (special tokens kept, as vLLM's)
"""
from __future__ import annotations

import asyncio

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from onnxlm.runtime.errors import InputError
from onnxlm.runtime.manifest import no_chat_template

from . import protocol, tools
from .gate import authorize, available, read_body
from .protocol import bad

PROMPT_KEYS = {"model", "prompt", "add_special_tokens", "return_token_strs"}
CHAT_KEYS = {"model", "messages", "add_generation_prompt", "add_special_tokens", "return_token_strs", "tools",
             "tool_choice", "parallel_tool_calls", "chat_template_kwargs"}
DETOKENIZE_KEYS = {"model", "tokens"}


def _tokenizer(model, param: str):
    if model.tokenizer is None:
        raise bad(param, "this model has no tokenizer.json: it takes and gives token ids only", code="no_tokenizer")
    return model.tokenizer


async def tokenize(request: HTTPRequest):
    authorize(request)
    model = available(request)
    body = await read_body(request, PROMPT_KEYS | CHAT_KEYS)
    if ("prompt" in body) == ("messages" in body):
        raise bad("prompt", "give either prompt (a string, encoded as /v1/completions encodes it) or messages "
                            "(rendered as /v1/chat/completions renders them)")
    strs = protocol._get_bool(body, "return_token_strs", False)
    if "prompt" in body:
        ids = await _prompt_ids(model, body)
    else:
        ids = await _chat_ids(model, body)
    tok = _tokenizer(model, "prompt")
    return JSONResponse({"count": len(ids), "max_model_len": model.max_positions, "tokens": ids,
                         "token_strs": [tok.id_to_token(i) for i in ids] if strs else None})


async def _prompt_ids(model, body: dict) -> list[int]:
    """A prompt's ids as /v1/completions encodes a string (the tokenizer's special tokens, e.g. BOS, added unless
    ``add_special_tokens`` is false; special-token strings in the text read as those tokens)."""
    extra = sorted(k for k in body if k in CHAT_KEYS - PROMPT_KEYS)
    if extra:
        raise bad(extra[0], "only with messages")
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise bad("prompt", f"expected a string, got {type(prompt).__name__}")
    add = protocol._get_bool(body, "add_special_tokens", True)
    tok = _tokenizer(model, "prompt")
    try:  # a long text takes a while: off the event loop
        return await asyncio.to_thread(tok.encode, prompt, add)
    except InputError as exc:
        raise bad("prompt", str(exc)) from None


async def _chat_ids(model, body: dict) -> list[int]:
    """Messages' ids exactly as /v1/chat/completions feeds them to the model: the chat template with the generation
    prompt, the tools shown, ``chat_template_kwargs``; encoded without the tokenizer's special tokens (the template
    writes any BOS)."""
    if not protocol._get_bool(body, "add_generation_prompt", True):
        raise bad("add_generation_prompt", "only true: the chat endpoint always ends the prompt with the "
                                           "assistant's turn, and /tokenize gives what it feeds the model")
    if protocol._get_bool(body, "add_special_tokens", False):
        raise bad("add_special_tokens", "only false with messages: the chat template writes the special tokens "
                                        "(e.g. BOS) the chat endpoint feeds the model")
    msgs = protocol.messages(body)
    template_vars = protocol.template_kwargs(body)
    if not model.chat_template:
        raise bad("messages", f"{no_chat_template(model.manifest)}; tokenize a prompt instead",
                  code="chat_not_supported")
    _tokenizer(model, "messages")
    treq = tools.check(body, model.chat_template)
    return await asyncio.to_thread(tools.render, model, msgs, treq, template_vars)


async def detokenize(request: HTTPRequest):
    authorize(request)
    model = available(request)
    body = await read_body(request, DETOKENIZE_KEYS)
    ids = body.get("tokens")
    if not isinstance(ids, list) or not all(protocol._is_int(i) for i in ids):
        raise bad("tokens", "required: a list of integer token ids")
    wrong = sorted({int(i) for i in ids if not 0 <= i < model.vocab_size})
    if wrong:
        raise bad("tokens", f"token ids {wrong[:20]} are out of range; allowed: 0 <= id < {model.vocab_size}")
    tok = _tokenizer(model, "tokens")
    text = await asyncio.to_thread(tok.decode, ids, False)
    return JSONResponse({"prompt": text})
