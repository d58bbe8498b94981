"""A change to other libraries' module globals that overlapping blocks in several threads share.

``SharedPatch(apply, undo)``: calling it gives a context manager; the first block to open runs ``apply()`` (which
leaves nothing changed when it raises), the last to end runs ``undo(what apply returned)``, under one lock. Two
loads in two threads then never take the change away from each other, nor leave it in place after both ended
(``gguf_reader.readers_shared_with_transformers``, ``gguf_architectures.known_to_transformers``).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable


class SharedPatch:
    def __init__(self, apply: Callable[[], Any], undo: Callable[[Any], None]):
        self._apply, self._undo = apply, undo
        self._lock = threading.Lock()
        self._users = 0  # open blocks, all threads
        self._state: Any = None  # what apply returned, while the change is in place

    @contextmanager
    def __call__(self):
        with self._lock:
            if self._users == 0:
                self._state = self._apply()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._undo(self._state)
                    self._state = None
