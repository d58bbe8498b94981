"""Whether the Hugging Face Hub can be reached, asked once before a hub name is loaded.

Without a network, huggingface_hub retries a name it cannot resolve for ~30 s (a dozen lines of retry messages)
before transformers says the model cannot be found. ``hub_reachable()`` resolves the hub's host once per process
(in a daemon thread, given ``TIMEOUT`` seconds: a resolver that hangs is read as unreachable); where it fails, the
loader asks transformers for what the Hugging Face cache holds only (``local_files_only``) and says why when that is
nothing. ``HF_HUB_OFFLINE`` set: unreachable without asking.
"""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

__all__ = ["hub_endpoint", "hub_reachable", "cache_only", "TIMEOUT"]

TIMEOUT = 3.0  # seconds the host's name may take to resolve
_known: dict[str, bool] = {}


def hub_endpoint() -> str:
    """The hub's address as huggingface_hub uses it (``HF_ENDPOINT``, else https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable() -> bool:
    """Whether the hub's host name resolves (once per process and endpoint)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = hub_endpoint()
    if endpoint not in _known:
        host = urlparse(endpoint).hostname or ""
        found = threading.Event()

        def resolve() -> None:
            try:
                socket.getaddrinfo(host, 443)
                found.set()
            except OSError:
                pass

        threading.Thread(target=resolve, daemon=True).start()
        _known[endpoint] = found.wait(TIMEOUT)
    return _known[endpoint]


def cache_only(local: bool) -> dict:
    """transformers' ``from_pretrained`` keywords for a source (``local``: a directory): ``{"local_files_only":
    True}`` for a hub name while the hub cannot be reached (the Hugging Face cache only), else none."""
    return {} if local or hub_reachable() else {"local_files_only": True}
