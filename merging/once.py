"""Values built once and shared by threads: the app serves every browser session from one process,
and objects it shares (zoos, their heads and data, mergers) fill caches lazily. ``OnceCache``
builds each key's value exactly once, under that key's own lock (other threads asking for the same
key wait for that build; different keys build in parallel), and optionally keeps only the most
recently used entries."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class OnceCache(Generic[K, V]):
    """A thread-safe map filled by ``get(key, build)``; at most ``max_entries`` kept (None: all)."""

    def __init__(self, max_entries: int | None = None) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[K, threading.Lock] = {}

    def get(self, key: K, build: Callable[[], V]) -> V:
        """The value for ``key``: stored, else ``build()``, run once however many threads ask."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._building.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = build()  # an exception leaves nothing stored: the next call builds again
            with self._lock:
                self._items[key] = value
                self._building.pop(key, None)
                while self.max_entries is not None and len(self._items) > self.max_entries:
                    self._items.popitem(last=False)
            return value

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def peek(self, key: K) -> V | None:
        """The value stored for ``key``, or None; never builds."""
        with self._lock:
            return self._items.get(key)
