"""Arithmetic over named sensors, for derived features (``torque * speed / 9549``).

An expression is parsed once into a small tree of :class:`Expr` nodes with Python's ``ast`` (only
numbers, names, ``+ - * /``, unary minus and ``abs``/``min``/``max``/``sqrt`` are allowed; nothing
is ever ``eval``-ed). The tree has one evaluator per engine: :meth:`Expr.evaluate` for numpy here,
and ``zaindari.features_spark`` for Spark columns, so a derived feature is defined once.
"""

from __future__ import annotations

import ast
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "Algebra",
    "BinaryOp",
    "Call",
    "Const",
    "Expr",
    "ExpressionError",
    "Name",
    "Negate",
    "parse_expression",
]

FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
FUNCTIONS = {"abs": 1, "sqrt": 1, "min": 2, "max": 2}


class ExpressionError(ValueError):
    """An expression uses something other than numbers, names and the allowed operators."""


class Algebra(Protocol[T]):
    """One engine's meaning for each kind of node (numpy arrays here, Spark columns elsewhere)."""

    def const(self, value: float) -> T: ...
    def name(self, name: str) -> T: ...
    def binary(self, op: str, left: T, right: T) -> T: ...
    def negate(self, operand: T) -> T: ...
    def call(self, fn: str, args: list[T]) -> T: ...


class Expr(ABC):
    """A node of a derived-feature expression."""

    @abstractmethod
    def names(self) -> frozenset[str]:
        """Every sensor name the expression reads."""

    @abstractmethod
    def fold(self, algebra: Algebra[T]) -> T:
        """Evaluate the tree in one engine."""

    def evaluate(self, columns: Mapping[str, FloatArray]) -> FloatArray:
        """Evaluate on numpy columns. Division by zero gives ``nan`` (reported by the caller)."""
        size = len(next(iter(columns.values()))) if columns else 1
        # overflow and division by zero give inf/nan, which the caller reports as not finite:
        # one errstate for the whole tree (entering one costs ~5 us, as much as a small column's op)
        with np.errstate(all="ignore"):
            return np.asarray(self.fold(_NumpyAlgebra(columns, size)), dtype=np.float64)


class _NumpyAlgebra:
    def __init__(self, columns: Mapping[str, FloatArray], size: int) -> None:
        self.columns = columns
        self.size = size

    def const(self, value: float) -> FloatArray:
        return np.full(self.size, value, dtype=np.float64)

    def name(self, name: str) -> FloatArray:
        return np.asarray(self.columns[name], dtype=np.float64)

    def binary(self, op: str, left: FloatArray, right: FloatArray) -> FloatArray:
        # (under evaluate's np.errstate)
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "*":
            return left * right
        return np.where(right == 0, np.nan, np.divide(left, right))

    def negate(self, operand: FloatArray) -> FloatArray:
        return -operand

    def call(self, fn: str, args: list[FloatArray]) -> FloatArray:
        if fn == "abs":
            return np.abs(args[0])
        if fn == "sqrt":
            return np.where(args[0] < 0, np.nan, np.sqrt(np.abs(args[0])))
        if fn == "min":
            return np.minimum(args[0], args[1])
        return np.maximum(args[0], args[1])


@dataclass(frozen=True)
class Const(Expr):
    value: float

    def names(self) -> frozenset[str]:
        return frozenset()

    def fold(self, algebra: Algebra[T]) -> T:
        return algebra.const(self.value)


@dataclass(frozen=True)
class Name(Expr):
    id: str

    def names(self) -> frozenset[str]:
        return frozenset({self.id})

    def fold(self, algebra: Algebra[T]) -> T:
        return algebra.name(self.id)


@dataclass(frozen=True)
class BinaryOp(Expr):
    op: str
    left: Expr
    right: Expr

    def names(self) -> frozenset[str]:
        return self.left.names() | self.right.names()

    def fold(self, algebra: Algebra[T]) -> T:
        return algebra.binary(self.op, self.left.fold(algebra), self.right.fold(algebra))


@dataclass(frozen=True)
class Negate(Expr):
    operand: Expr

    def names(self) -> frozenset[str]:
        return self.operand.names()

    def fold(self, algebra: Algebra[T]) -> T:
        return algebra.negate(self.operand.fold(algebra))


@dataclass(frozen=True)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]

    def names(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for a in self.args:
            out |= a.names()
        return out

    def fold(self, algebra: Algebra[T]) -> T:
        return algebra.call(self.fn, [a.fold(algebra) for a in self.args])


def _convert(node: ast.AST) -> Expr:
    if isinstance(node, ast.Expression):
        return _convert(node.body)
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return Const(float(node.value))
    if isinstance(node, ast.Name):
        return Name(node.id)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return BinaryOp(_BINARY[type(node.op)], _convert(node.left), _convert(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _convert(node.operand)
        return Negate(inner) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        if node.keywords or len(node.args) != FUNCTIONS[node.func.id]:
            raise ExpressionError(f"{node.func.id}() takes {FUNCTIONS[node.func.id]} argument(s)")
        return Call(node.func.id, tuple(_convert(a) for a in node.args))
    raise ExpressionError(
        f"unsupported element {ast.dump(node)[:60]!r}: use numbers, sensor names, + - * /, "
        "abs(), sqrt(), min(a, b), max(a, b)"
    )


def parse_expression(text: str) -> Expr:
    """Parse ``text`` into an expression tree, or raise :class:`ExpressionError`."""
    if len(text) > 500:
        raise ExpressionError("expression longer than 500 characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"expression {text!r} is not valid: {exc.msg}") from exc
    return _convert(tree)
