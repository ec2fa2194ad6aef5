"""ONNX scoring: one onnxruntime session per model version, one ``run`` call per matrix.

Sessions are expensive, so they are cached per (bundle content hash, thread count) for the life
of the process (a Lambda container, the edge server). ``intra_op_num_threads`` is always set
explicitly: onnxruntime reads the host's CPU count, which inside Lambda is not the function's share.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from zaindari.bundle import BundleError, ModelBundle

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["ScoreOutputs", "Scorer", "check_graph", "get_scorer"]

_ORT_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)"}
_NP_TYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64}
_CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, int], Scorer] = OrderedDict()
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class ScoreOutputs:
    """A scored matrix: the score per row, per-feature contributions if the model gives them,
    and every raw output by name."""

    score: npt.NDArray[np.float64]
    contributions: npt.NDArray[np.float64] | None
    raw: dict[str, npt.NDArray[Any]]


def _session(bundle: ModelBundle, threads: int) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(bundle.model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a broken graph
        raise BundleError(f"model.onnx cannot be loaded by onnxruntime: {exc}") from exc


def _check_session(bundle: ModelBundle, session: onnxruntime.InferenceSession) -> None:
    sig = bundle.signature
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise BundleError(f"model.onnx has {len(inputs)} inputs; the signature declares 1")
    actual = inputs[0]
    if actual.name != sig.input.name:
        raise BundleError(f"model.onnx input is {actual.name!r}; the signature says {sig.input.name!r}")
    if actual.type != _ORT_TYPES[sig.input.dtype]:
        raise BundleError(f"model.onnx input type {actual.type} does not match signature {sig.input.dtype}")
    width = actual.shape[1] if len(actual.shape) == 2 else None
    if len(actual.shape) != 2 or (isinstance(width, int) and width != len(sig.features)):
        raise BundleError(
            f"model.onnx input shape {actual.shape} does not fit the signature's {len(sig.features)} features"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    for out in sig.outputs:
        if out.name not in outputs:
            raise BundleError(
                f"signature output {out.name!r} is not produced by model.onnx ({sorted(outputs)})"
            )
        if outputs[out.name].type != _ORT_TYPES[out.dtype]:
            raise BundleError(
                f"model.onnx output {out.name!r} type {outputs[out.name].type} does not match {out.dtype}"
            )


def check_graph(bundle: ModelBundle) -> None:
    """Open the bundle's graph and check it against its signature, then score one row of zeros."""
    scorer = get_scorer(bundle, threads=1)
    scorer.score(np.zeros((1, len(bundle.signature.features)), dtype=np.float32))


class Scorer:
    """Scores feature matrices with one bundle's model."""

    def __init__(self, bundle: ModelBundle, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.bundle = bundle
        self.session = _session(bundle, threads)
        _check_session(bundle, self.session)
        sig = bundle.signature
        self._input_name = sig.input.name
        self._dtype = _NP_TYPES[sig.input.dtype]
        self._score_name = sig.score_output.name
        contributions = sig.output("contributions")
        self._contrib_name = contributions.name if contributions else None
        self._output_names = [o.name for o in sig.outputs]
        self._width = len(sig.features)

    def score(self, matrix: npt.NDArray[Any]) -> ScoreOutputs:
        """Score every row of ``matrix`` (rows x features) in a single ``run`` call."""
        shape = matrix.shape
        width = self._width
        if len(shape) != 2 or shape[1] != width:
            raise ValueError(f"matrix shape {shape} does not fit {width} features")
        rows = shape[0]
        if rows == 0:
            return ScoreOutputs(np.zeros(0), np.zeros((0, width)) if self._contrib_name else None, {})
        if matrix.dtype != self._dtype or not matrix.flags.c_contiguous:
            matrix = np.ascontiguousarray(matrix, dtype=self._dtype)
        values = self.session.run(self._output_names, {self._input_name: matrix})
        raw = dict(zip(self._output_names, values, strict=True))
        score = np.asarray(raw[self._score_name], dtype=np.float64).reshape(rows, -1)[:, -1]
        contrib = (
            np.asarray(raw[self._contrib_name], dtype=np.float64).reshape(rows, -1)
            if self._contrib_name
            else None
        )
        return ScoreOutputs(score=score, contributions=contrib, raw=raw)


def get_scorer(bundle: ModelBundle, threads: int = 1) -> Scorer:
    """The cached :class:`Scorer` for ``bundle`` (created on first use; at most a few kept)."""
    key = (bundle.content_hash, threads)
    with _cache_lock:
        scorer = _cache.get(key)
        if scorer is not None:
            _cache.move_to_end(key)
            if scorer.bundle.version != bundle.version:
                scorer = _relabel(scorer, bundle)
                _cache[key] = scorer
            return scorer
    scorer = Scorer(bundle, threads)
    with _cache_lock:
        _cache[key] = scorer
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return scorer


def _relabel(scorer: Scorer, bundle: ModelBundle) -> Scorer:
    """The same graph registered under another version: reuse the session, carry the new label."""
    clone = object.__new__(Scorer)
    clone.__dict__.update(scorer.__dict__)
    clone.bundle = bundle
    return clone
