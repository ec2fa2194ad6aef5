"""A pydantic :class:`~pydantic.ValidationError` as one line a person can act on.

The model spec, its ``training`` section and the maintenance log report every problem of an entry
this way: ``<field path>: <message>; ...`` (pydantic's ``Value error, `` prefix dropped).
"""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["validation_problems"]


def validation_problems(exc: ValidationError, *, prefix: str = "", whole: str = "") -> str:
    """Every error of ``exc`` as ``<prefix><field path>: <message>``, joined by ``"; "``; an error
    of the whole object (no field) is named ``whole`` (after ``prefix``)."""
    return "; ".join(
        f"{prefix}{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors(include_url=False)
    )
