"""Arithmetic over named sensors, for derived features (``torque * speed / 9549``).

An expression is parsed once into a small tree of :class:`Expr` nodes with Python's ``ast`` (only
numbers, names, ``+ - * /``, unary minus and ``abs``/``min``/``max``/``sqrt`` are allowed; nothing
is ever ``eval``-ed). The tree has one evaluator per engine: :meth:`Expr.evaluate` for numpy here,
and ``zaindari.features_spark`` for Spark columns, so a derived feature is defined once.
"""

from __future__ import annotations

import ast
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from zaindari.codegen import COMPILE_ERRORS, IdentityCache, build

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

    def evaluate_rows(self, column: Callable[[str], Sequence[float]], n: int) -> list[float] | None:
        """:meth:`evaluate` on Python floats, for a few rows (``column(name)``: a list of ``n``): the
        same IEEE operations on the same numbers, so every finite result is the same, bit for bit
        (a row with a result that is not finite is rejected, whatever its bits). ``None`` where
        ``min``/``max`` meet two zeros of different signs (``0.0`` against ``-0.0``: numpy's own
        choice is not restated here; the caller evaluates with numpy). A tree Python cannot
        compile is evaluated with numpy here (the same numbers). The tree is compiled to one Python
        function once (:func:`_row_function`)."""
        function, names = _row_function(self)
        if function is None:  # a tree Python cannot compile: numpy's own numbers
            arrays = {name: np.array(column(name), dtype=np.float64) for name in self.names()}
            values: list[float] = self.evaluate(arrays).tolist()
            return values if arrays else values * n  # (no names: one value, as for one row)
        try:
            return function(n, *[column(name) for name in names])
        except _ZeroTie:
            return None


class _ZeroTie(Exception):
    """``min``/``max`` of two zeros on the Python path (see :meth:`Expr.evaluate_rows`)."""


def _div(a: float, b: float) -> float:
    # numpy: np.where(right == 0, nan, left / right); a Python float division only raises on zero
    return math.nan if b == 0 else a / b


def _sqrt(a: float) -> float:
    return math.nan if a < 0 else math.sqrt(abs(a))


def _min(a: float, b: float) -> float:
    if a < b:
        return a
    if b < a:
        return b
    if a == b:
        if a == 0 and math.copysign(1.0, a) != math.copysign(1.0, b):
            raise _ZeroTie  # 0.0 against -0.0: numpy's choice
        return a  # (equal, and not zeros of different signs: the same number)
    return math.nan  # one of them is nan: np.minimum propagates it (the row is rejected)


def _max(a: float, b: float) -> float:
    if a > b:
        return a
    if b > a:
        return b
    if a == b:
        if a == 0 and math.copysign(1.0, a) != math.copysign(1.0, b):
            raise _ZeroTie
        return a
    return math.nan


class _TextAlgebra:
    """A node as the name of a Python value over one row's values (``v<k>``): leaves by name,
    every other node one assignment ``t<k> = ...`` of names (:attr:`lines`), so the generated
    code is flat however deep the tree (Python refuses ~200 nested parentheses)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.constants: list[float] = []
        self.lines: list[str] = []

    def _assign(self, text: str) -> str:
        self.lines.append(f"t{len(self.lines)} = {text}")
        return f"t{len(self.lines) - 1}"

    def const(self, value: float) -> str:
        self.constants.append(value)
        return f"K{len(self.constants) - 1}"

    def name(self, name: str) -> str:
        return self.names.setdefault(name, f"v{len(self.names)}")

    def binary(self, op: str, left: str, right: str) -> str:
        return self._assign(f"_div({left}, {right})" if op == "/" else f"{left} {op} {right}")

    def negate(self, operand: str) -> str:
        return self._assign(f"-{operand}")

    def call(self, fn: str, args: list[str]) -> str:
        helper = {"abs": "abs", "sqrt": "_sqrt", "min": "_min", "max": "_max"}[fn]
        return self._assign(f"{helper}({', '.join(args)})")


#: Per expression tree: its compiled row function and the columns it takes, or ``None`` for a
#: tree that cannot be compiled (evaluated with numpy instead, see :meth:`Expr.evaluate_rows`).
_ROW_FUNCTIONS: IdentityCache[Expr, tuple[Callable[..., list[float]] | None, tuple[str, ...]]] = (
    IdentityCache()
)


def _row_source(tree: Expr) -> tuple[str, list[float], tuple[str, ...]]:
    """The source of ``make(_div, _sqrt, _min, _max, *constants)`` returning ``tree``'s
    ``row_values(n, *columns)``; the constants; the names of the columns it takes."""
    algebra = _TextAlgebra()
    result = tree.fold(algebra)
    variables = list(algebra.names.values())
    columns = [f"c{k}" for k in range(len(variables))]
    constants = [f"K{k}" for k in range(len(algebra.constants))]
    body = "".join(f"            {line}\n" for line in algebra.lines)
    if variables:
        loop = f"        for {', '.join(variables)}, in zip({', '.join(columns)}, strict=True):\n"
    else:
        loop = "        for _ in range(n):\n"
    source = (
        f"def make({', '.join(['_div', '_sqrt', '_min', '_max', *constants])}):\n"
        f"    def row_values({', '.join(['n', *columns])}):\n"
        f"        out = []\n"
        f"        append = out.append\n"
        f"{loop}"
        f"{body}"
        f"            append({result})\n"
        f"        return out\n"
        f"    return row_values\n"
    )
    return source, algebra.constants, tuple(algebra.names)


def _row_function(tree: Expr) -> tuple[Callable[..., list[float]] | None, tuple[str, ...]]:
    """``tree`` as ``function(n, *columns)`` returning its value per row, and the names of the
    columns it takes (compiled once per tree); ``None`` (kept, so not tried again) when Python
    cannot compile it."""
    return _ROW_FUNCTIONS.get(tree, _compile_rows)


def _compile_rows(tree: Expr) -> tuple[Callable[..., list[float]] | None, tuple[str, ...]]:
    try:
        source, constants, names = _row_source(tree)
        function: Callable[..., list[float]] = build(source, _div, _sqrt, _min, _max, *constants)
    except COMPILE_ERRORS:
        return None, ()
    return function, names


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
