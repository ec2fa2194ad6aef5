"""A pydantic :class:`~pydantic.ValidationError` as one line a person can act on.

The model spec, its ``training`` section and the maintenance log report every problem of an entry
this way: ``<field path>: <message>; ...`` (pydantic's ``Value error, `` prefix dropped).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ValidationError

__all__ = ["CachedModel", "validation_problems"]


class CachedModel(BaseModel):
    """A frozen model whose ``functools.cached_property`` values (kept in its ``__dict__``) are
    worked out again on a copy made with ``model_copy(update=...)``: pydantic copies the
    ``__dict__``, so the copy would answer from the original's fields."""

    def __eq__(self, other: object) -> bool:
        # the fields alone: a cached value (a numpy array) must not take part (pydantic compares
        # the whole __dict__ first, and two arrays there raise instead of comparing)
        if not isinstance(other, BaseModel):
            return NotImplemented
        if type(self) is not type(other):
            return False
        return all(
            self.__dict__.get(name) == other.__dict__.get(name) for name in type(self).model_fields
        ) and (self.__pydantic_extra__ == other.__pydantic_extra__)

    __hash__ = BaseModel.__hash__

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        if update:
            for name in _cached_names(type(self)):
                copy.__dict__.pop(name, None)
        return copy


@functools.cache
def _cached_names(cls: type) -> tuple[str, ...]:
    return tuple(
        name
        for klass in cls.__mro__
        for name, value in vars(klass).items()
        if isinstance(value, functools.cached_property)
    )


def validation_problems(exc: ValidationError, *, prefix: str = "", whole: str = "") -> str:
    """Every error of ``exc`` as ``<prefix><field path>: <message>``, joined by ``"; "``; an error
    of the whole object (no field) is named ``whole`` (after ``prefix``)."""
    return "; ".join(
        f"{prefix}{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors(include_url=False)
    )
