"""POST /tokenize and /detokenize, in vLLM's shapes and in llama.cpp's server's: the ids the generation endpoints
feed the model for a prompt (as /v1/completions encodes it) or for chat messages (as /v1/chat/completions renders
them, tools included), and the text of ids.

/tokenize  vLLM:      {"prompt": str, "add_special_tokens": true, "return_token_strs": false}
                      {"messages": [...], "tools": [...], "chat_template_kwargs": {...}, "return_token_strs": false}
                   -> {"count", "max_model_len", "tokens", "token_strs"}   (token_strs: vocabulary pieces, or null)
           llama.cpp: {"content": str, "add_special": false, "parse_special": true, "with_pieces": false}
                   -> {"tokens": [id]}, with_pieces: {"tokens": [{"id", "piece"}]} (a piece that is not whole UTF-8
                      text: its bytes)
/detokenize {"tokens": [int]} -> {"prompt": str, "content": str}          (vLLM's and llama.cpp's name; special
                                                                            tokens kept, as both keep them)
/apply-template {"messages": [...], "tools", "chat_template_kwargs"} -> {"prompt": str}   (llama.cpp's: the text
                                                                            /v1/chat/completions renders)
"""
from __future__ import annotations

import asyncio

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from onnxlm.runtime.errors import InputError
from onnxlm.runtime.manifest import no_chat_template

from . import protocol, tools
from .choices import token_bytes
from .gate import authorize, available, check_model_name, read_body
from .protocol import bad

PROMPT_KEYS = {"model", "prompt", "add_special_tokens", "return_token_strs"}
CHAT_KEYS = {"model", "messages", "add_generation_prompt", "add_special_tokens", "return_token_strs", "tools",
             "tool_choice", "parallel_tool_calls", "chat_template_kwargs", "continue_final_message"}
LLAMA_CPP_KEYS = {"model", "content", "add_special", "parse_special", "with_pieces"}
DETOKENIZE_KEYS = {"model", "tokens"}
TEMPLATE_KEYS = {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "chat_template_kwargs",
                 "continue_final_message", "add_generation_prompt"}


def _tokenizer(model, param: str):
    if model.tokenizer is None:
        raise bad(param, "this model has no tokenizer.json: it takes and gives token ids only", code="no_tokenizer")
    return model.tokenizer


async def tokenize(request: HTTPRequest):
    authorize(request)
    model = available(request)
    body = await read_body(request, PROMPT_KEYS | CHAT_KEYS | LLAMA_CPP_KEYS, llama_cpp=True)
    if "content" in body:  # llama.cpp's form: any model name, as its single-model server
        return await _llama_cpp_tokenize(model, body)
    if body.get("model") is not None:  # vLLM's forms name the served model
        check_model_name(request, body["model"])
    if ("prompt" in body) == ("messages" in body):
        raise bad("prompt", "give one of prompt (a string, encoded as /v1/completions encodes it), messages "
                            "(rendered as /v1/chat/completions renders them) or content (llama.cpp's form)")
    strs = protocol._get_bool(body, "return_token_strs", False)
    if "prompt" in body:
        ids = await _prompt_ids(model, body)
    else:
        ids = await _chat_ids(model, body)
    tok = model.tokenizer  # checked by _prompt_ids / _chat_ids
    # a long text's strings and JSON take seconds: built off the event loop, as its ids were
    return await asyncio.to_thread(lambda: JSONResponse({
        "count": len(ids), "max_model_len": model.max_positions, "tokens": ids,
        "token_strs": [tok.id_to_token(i) for i in ids] if strs else None}))


async def _llama_cpp_tokenize(model, body: dict) -> JSONResponse:
    """llama.cpp's form: ``content`` encoded with its defaults (no BOS unless ``add_special``; special-token
    strings read as those tokens unless ``parse_special`` is false)."""
    extra = sorted(k for k in body if k not in LLAMA_CPP_KEYS)
    if extra:
        raise bad(extra[0], "not with content (llama.cpp's form: content, add_special, parse_special, with_pieces)")
    content = body["content"]
    if not isinstance(content, str):
        raise bad("content", f"expected a string, got {type(content).__name__}")
    add = protocol._get_bool(body, "add_special", False)
    parse = protocol._get_bool(body, "parse_special", True)
    pieces = protocol._get_bool(body, "with_pieces", False)
    tok = _tokenizer(model, "content")

    def answer() -> JSONResponse:  # a worker thread: a long text's ids, pieces and JSON take seconds
        ids = tok.encode(content, add, split_special_tokens=not parse)
        return JSONResponse({"tokens": [{"id": i, "piece": _piece(model, i)} for i in ids] if pieces else ids})

    try:
        return await asyncio.to_thread(answer)
    except InputError as exc:
        raise bad("content", str(exc)) from None


def _piece(model, token_id: int) -> str | list[int]:
    """A token's text (special tokens as written), or its bytes when it holds part of a UTF-8 character."""
    text = model.tokenizer.decode([token_id], skip_special_tokens=False)
    return token_bytes(model, token_id) if "\ufffd" in text else text


async def _prompt_ids(model, body: dict) -> list[int]:
    """A prompt's ids as /v1/completions encodes a string (the tokenizer's special tokens, e.g. BOS, added unless
    ``add_special_tokens`` is false; special-token strings in the text read as those tokens)."""
    extra = sorted(k for k in body if k not in PROMPT_KEYS)
    if extra:
        raise bad(extra[0], "only with messages" if extra[0] in CHAT_KEYS else "only with content (llama.cpp's form)")
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
    extra = sorted(k for k in body if k not in CHAT_KEYS)
    if extra:
        raise bad(extra[0], "only with prompt" if extra[0] in PROMPT_KEYS else "only with content (llama.cpp's form)")
    if protocol._get_bool(body, "add_special_tokens", False):
        raise bad("add_special_tokens", "only false with messages: the chat template writes the special tokens "
                                        "(e.g. BOS) the chat endpoint feeds the model")
    return await _rendered(model, body, tokenize=True)


async def _rendered(model, body: dict, *, tokenize: bool) -> list[int] | str:
    """``messages`` (``tools``, ``chat_template_kwargs``) through the chat template as /v1/chat/completions renders
    them -> the ids it feeds the model, or with ``tokenize=False`` the text they encode."""
    msgs = protocol.developer_as_system(protocol.messages(body), model.chat_template)
    template_vars = {**protocol.template_kwargs(body), **protocol.continuation(body, msgs, bare=True)}
    if not model.chat_template:
        raise bad("messages", f"{no_chat_template(model.manifest)}; use /v1/completions' prompt instead",
                  code="chat_not_supported")
    _tokenizer(model, "messages")
    treq = await asyncio.to_thread(tools.check, body, model.chat_template)  # schemas read: off the loop
    return await asyncio.to_thread(lambda: tools.render(model, msgs, treq, template_vars, tokenize=tokenize))


async def apply_template(request: HTTPRequest):
    """llama.cpp's POST /apply-template: ``messages`` (``tools``, ``chat_template_kwargs``) -> ``{"prompt"}``, the
    text /v1/chat/completions feeds the model (its ids are /tokenize's for the same messages)."""
    authorize(request)
    model = available(request)
    body = await read_body(request, TEMPLATE_KEYS, llama_cpp=True)
    return JSONResponse({"prompt": await _rendered(model, body, tokenize=False)})


async def detokenize(request: HTTPRequest):
    authorize(request)
    model = available(request)
    body = await read_body(request, DETOKENIZE_KEYS, llama_cpp=True)
    ids = body.get("tokens")
    if not isinstance(ids, list) or not all(protocol._is_int(i) for i in ids):
        raise bad("tokens", "required: a list of integer token ids")
    wrong = sorted({int(i) for i in ids if not 0 <= i < model.vocab_size})
    if wrong:
        raise bad("tokens", f"token ids {wrong[:20]} are out of range; allowed: 0 <= id < {model.vocab_size}")
    tok = _tokenizer(model, "tokens")
    text = await asyncio.to_thread(tok.decode, ids, False)
    return JSONResponse({"prompt": text, "content": text})
