"""Generated Python for the small-group fast paths: the one place generated text is run.

Three parts of the core compile what a model's spec says into plain Python functions once, so
a group of a few rows is computed without numpy's per-call cost, on the same IEEE operations:
a window's statistics (:mod:`zaindari.features`), a derived expression
(:mod:`zaindari.expressions`), an expert rule's flags (:mod:`zaindari.alerting`). Each writes the
source of ``make(...)``, a function that returns the compiled functions; the text holds only
names the generator made (``v0``, ``t3``, ``L1``...), operators the spec validated and calls of
helpers passed in: every number of the spec is an argument of ``make``, never text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

#: What compiling generated source can raise for a tree or rule Python cannot take (too deep,
#: too large): the caller falls back to numpy for it.
COMPILE_ERRORS = (SyntaxError, RecursionError, MemoryError, ValueError)

_K = TypeVar("_K")
_V = TypeVar("_V")


def build(source: str, *args: Any) -> Any:
    """Run ``source`` (which defines ``make``) and return ``make(*args)``."""
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # our own generated text (see the module docstring)
    return namespace["make"](*args)


class IdentityCache(Generic[_K, _V]):
    """What was compiled for each object of a spec (a tree, a rule), by identity: the object is
    kept with its value, so an id reused by another object after the first is freed never
    matches. Emptied past ``limit`` objects (a process that loads models one after another)."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._entries: dict[int, tuple[_K, _V]] = {}

    def get(self, key: _K, make: Callable[[_K], _V]) -> _V:
        entry = self._entries.get(id(key))
        if entry is not None and entry[0] is key:
            return entry[1]
        value = make(key)
        self.put(key, value)
        return value

    def put(self, key: _K, value: _V) -> None:
        """Keep ``value`` for ``key`` (in place of what was kept for it)."""
        if len(self._entries) > self.limit:
            self._entries.clear()
        self._entries[id(key)] = (key, value)
