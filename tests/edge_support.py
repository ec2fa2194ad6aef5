"""Helpers for the edge tests: model updates (good, corrupt, failing), golden inputs, a real broker."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zaindari.bundle import LearnedThresholds, ModelBundle, Signature, load_bundle, write_bundle
from zaindari.infra.http_server import free_port
from zaindari.registry_events import ModelUpdate


def edge_serve_env(root: Path, bundle_dir: Path, token: str, *, data: str = "data") -> dict[str, str]:
    """The environment of a ``zaindari edge serve`` whose files are all under ``root``: the bearer
    ``token`` in ``root/secrets``, buffer and model store in ``root/<data>``, the first model
    installed from ``bundle_dir``."""
    secrets = root / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "zaindari-edge-token").write_text(token + "\n")
    return {
        "ZAINDARI_MODEL_PATH": str(bundle_dir),
        "ZAINDARI_EDGE_SECRETS_DIR": str(secrets),
        "ZAINDARI_EDGE_DATA_DIR": str(root / data),
        "ZAINDARI_EDGE_BUFFER_PATH": str(root / data / "buffer.db"),
        "ZAINDARI_EDGE_MODEL_DIR": str(root / data / "models"),
    }


def golden_readings(readings: list[dict[str, Any]], per_device: int = 20) -> list[dict[str, Any]]:
    """Normal operation on the plant's four devices: the first ``per_device`` readings of each."""
    out: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for r in readings:
        if counts.get(r["device_id"], 0) < per_device:
            counts[r["device_id"]] = counts.get(r["device_id"], 0) + 1
            out.append(r)
    return out


def bundle_variant(
    base: ModelBundle,
    out: Path,
    *,
    version: str,
    thresholds: LearnedThresholds | None = None,
    model: bytes | None = None,
    signature: Signature | None = None,
) -> Path:
    """A properly hashed bundle derived from ``base`` (another version, other thresholds or graph)."""
    shutil.rmtree(out, ignore_errors=True)
    extras = {k: v for k, v in base.extras.items()}
    return write_bundle(
        out,
        model=model if model is not None else base.model_path.read_bytes(),
        signature=signature or base.signature,
        spec=base.spec,
        thresholds=thresholds or base.thresholds,
        extras=extras,
        version=version,
    )


def update_for(bundle_dir: Path, uri: str, version: str) -> ModelUpdate:
    """The update event the cloud would send for ``bundle_dir`` published at ``uri``."""
    manifest = json.loads((bundle_dir / "MANIFEST.json").read_text())
    return ModelUpdate(
        model=manifest["model_name"], version=int(version), artifact_uri=uri, sha256=manifest["files"]
    )


def alarming_thresholds(base: ModelBundle) -> LearnedThresholds:
    """Learned thresholds so low that normal operation alarms: a model that must fail its smoke test."""
    return LearnedThresholds(levels={"warning": -1.0, "critical": -0.5}, direction="above", method="broken")


def erroring_model(base: ModelBundle, *, feature: str, above: float) -> tuple[bytes, Signature]:
    """A valid ONNX graph that scores 0 but fails at run time (an index out of bounds) on any row
    whose ``feature`` is above ``above``: it passes a smoke test on normal data, then errors on
    live traffic."""
    import onnx
    from onnx import TensorProto, helper

    sig = base.signature
    k = sig.features.index(feature)
    width = len(sig.features)
    nodes = [
        helper.make_node("Gather", ["features", "k"], ["column"], axis=1),
        helper.make_node("Greater", ["column", "limit"], ["high"]),
        helper.make_node("Cast", ["high"], ["high_i"], to=TensorProto.INT64),
        helper.make_node("Mul", ["high_i", "five"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["score"], axis=0),
    ]
    inits = [
        helper.make_tensor("k", TensorProto.INT64, [], [k]),
        helper.make_tensor("limit", TensorProto.FLOAT, [], [above]),
        helper.make_tensor("five", TensorProto.INT64, [], [5]),
        helper.make_tensor("table", TensorProto.FLOAT, [2], [0.0, 0.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "erroring",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    signature = Signature.model_validate(
        {
            "inputs": [{"name": "features", "dtype": "float32", "shape": [None, width]}],
            "features": sig.features,
            "outputs": [{"name": "score", "dtype": "float32", "shape": [None], "role": "score"}],
        }
    )
    return model.SerializeToString(), signature


def load(path: Path, version: str) -> ModelBundle:
    return load_bundle(path, version=version)


@contextmanager
def mosquitto(workdir: Path, port: int | None = None) -> Iterator[int]:
    """A real mosquitto broker (Debian's package) on a loopback port (a free one by default)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = port or free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"mosquitto did not start on port {port}: {err}") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
