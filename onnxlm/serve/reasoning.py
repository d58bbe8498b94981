"""A thinking model's reasoning apart from its answer on /v1/chat/completions, as llama.cpp's server returns it
(``--reasoning-format deepseek``, its default for templates that think) and vLLM's reasoning parsers do: the reply's
``<think> ... </think>`` block as ``message.reasoning_content`` (streamed as ``delta.reasoning_content``), the rest
as ``content`` (tool calls are read from the rest only).

``reasoning_format`` (a request field, llama.cpp's name): ``"auto"`` (the default: split when the chat template
writes ``<think>``: Qwen3, DeepSeek-R1's distills, SmolLM3), ``"deepseek"`` (always split), ``"none"`` (the block stays
in ``content``). The split itself (``split``, ``ReasoningStream``, ``prompt_opens``) is the runtime's
(onnxlm/runtime/reasoning.py), shared with ``onnxlm chat``.
"""
from __future__ import annotations

from onnxlm.runtime import reasoning as runtime_reasoning
from onnxlm.runtime.errors import ParameterError
from onnxlm.runtime.reasoning import ReasoningStream, prompt_opens, split

from .errors import model_error

__all__ = ["Splitter", "prompt_opens", "split", "wanted"]


def wanted(body: dict, template: str | None) -> bool:
    """The request's ``reasoning_format`` (400 naming it unless one of ``FORMATS``) -> whether to split."""
    try:
        fmt = body.get("reasoning_format")
        return runtime_reasoning.wanted("auto" if fmt is None else fmt, template)  # null: absent, as elsewhere
    except ParameterError as exc:
        raise model_error(exc) from None


class Splitter:
    """A chat stream's split, one ``ReasoningStream`` per choice: ``think`` None (no split) or whether replies begin
    inside the block."""

    def __init__(self, think: bool | None):
        self.think, self.streams = think, {}

    def event(self, index: int, text: str, finished: bool) -> tuple[str, str]:
        """Choice ``index``'s next piece (its last when ``finished``) -> (reasoning, content) to send now."""
        if self.think is None:
            return "", text
        stream = self.streams.get(index)
        if stream is None:
            stream = self.streams[index] = ReasoningStream(self.think)
        thought, content = stream.take(text)
        if finished:
            more, last = stream.rest()
            thought, content = thought + more, content + last
        return thought, content
