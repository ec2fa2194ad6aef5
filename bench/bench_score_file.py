"""score_file: a 1,000,000-row x 24-sensor historian drop, streamed in chunks vs read whole.

Ours: ``FileScoring.score_file`` on the file (CSV, then Parquet) with the default options: chunks of
3 MiB of CSV text (16,384 Parquet rows), each validated (vectorised), scored by one
``score_table`` call (features, one ONNX call, the alert policy with hysteresis), its scores written
as date-partitioned Parquet to a local folder, alerts summarised per device and rule, a manifest.
Baseline, measured in the same run: the straightforward approach, ``pandas.read_csv`` (or
``read_parquet``) of the whole file, the sensor columns as one float32 matrix, one
``InferenceSession.run`` (default session options) and a threshold compare; no validation, no
state, no alert policy, nothing written.

Each measurement runs in a fresh ``python`` process (imports included in its peak RSS, read from
``/proc/self/status`` VmHWM at the end; the model is loaded before the clock starts on both sides).
Throughput is the best of two runs; CPU time (user + system, all threads) is reported next to it,
because ours reads and validates the next chunk on a second thread while the current one scores,
and writes the previous one's outputs (scores, drift summaries) on a third: its wall time depends
on a second core being free, the baseline's much less (one thread, apart from onnxruntime's).
The cores each side used (CPU / wall) are reported too; the machine's load average is the last row. The files are generated once with numpy (not timed): 100
devices every 60 s, 24 sensors driven by three latent factors plus noise, two devices with an
anomalous episode; the model is a PCA bundle fitted on healthy rows of the same generator, with
learned thresholds at the 0.9999 / 0.99999 quantiles of its training score and one expert rule.
The same is done for a 4,000,000-row file: peak RSS must not grow with the file.

Run alone: ``python bench/run_all.py --only score_file`` (about a minute and a half).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _report import info_line, result_row

BENCHMARK = "score_file"
ROWS = 1_000_000
BIG_ROWS = 4_000_000
SENSORS = 24
DEVICES = 100
PIECE_ROWS = 250_000
PARQUET_ROW_GROUP = 131_072
REPEATS = 2
TARGET_CSV_SPEEDUP = 1.5
TARGET_RSS_SHARE = 1 / 3
TARGET_RSS_GROWTH = 1.2
SENSOR_NAMES = [f"s{j:02d}" for j in range(SENSORS)]
START = np.datetime64("2024-01-01T00:00:00", "s")
OUT = sys.stdout


def info(message: str) -> None:
    info_line(message, OUT)


def row(metric: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return result_row(BENCHMARK, metric, value, unit, **extra)


# ----------------------------------------------------------------------------------- data


def bench_spec() -> dict[str, Any]:
    """A 24-sensor anomaly spec (sensors only: the baseline can compute the same model input)."""
    return {
        "name": "bench-24",
        "sensors": [{"name": s, "unit": "u", "min": -10_000, "max": 10_000} for s in SENSOR_NAMES],
        "identifiers": {"asset": "device_id", "time": "timestamp", "mode": "mode"},
        "alert_policy": {
            "rule_set_version": "bench",
            "learned": {"for_consecutive": 2},
            "rules": [
                {
                    "id": "s00_high",
                    "severity": "critical",
                    "when": {"feature": "s00", "op": ">", "value": 400, "deadband": 5},
                    "for_consecutive": 3,
                }
            ],
        },
    }


def sensor_matrix(rows: int, seed: int, first_row: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 3))
    loadings = np.random.default_rng(1234).normal(size=(3, SENSORS))
    values = (latent @ loadings + rng.normal(scale=0.3, size=(rows, SENSORS))) * 10.0 + 100.0
    # two devices drift away for a while: something for the alert summaries
    index = first_row + np.arange(rows)
    device = index % DEVICES
    step = index // DEVICES
    for dev, begin in ((7, 2_000), (42, 6_000)):
        hit = (device == dev) & (step >= begin) & (step < begin + 300)
        values[hit, :6] += np.linspace(0, 80, SENSORS)[:6]
    return np.round(values, 3)


def write_bundle(target: Path) -> Path:
    from zaindari.pca_model import fit_pca_bundle
    from zaindari.spec import load_spec

    spec = load_spec(bench_spec())
    healthy = sensor_matrix(50_000, seed=99, first_row=10**9)
    return fit_pca_bundle(
        spec, healthy, target, version="bench", quantiles={"warning": 0.9999, "critical": 0.99999}
    )


def write_files(stem: Path, rows: int) -> tuple[Path, Path]:
    """The drop as CSV and as Parquet, written piece by piece (bounded memory)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    names = np.array([f"plant-1-m{d:03d}" for d in range(DEVICES)], dtype=object)
    modes = np.array(["run", "run", "heavy", "idle"], dtype=object)
    csv_path, parquet_path = stem.with_suffix(".csv"), stem.with_suffix(".parquet")
    csv_writer = parquet_writer = None
    try:
        for begin in range(0, rows, PIECE_ROWS):
            n = min(PIECE_ROWS, rows - begin)
            index = begin + np.arange(n)
            stamps = START + (index // DEVICES) * np.timedelta64(60, "s")
            columns = {
                "device_id": pa.array(names[index % DEVICES]),
                "timestamp": pa.array(np.char.add(np.datetime_as_string(stamps, unit="s"), "Z")),
                "mode": pa.array(modes[(index // (DEVICES * 90)) % len(modes)]),
            }
            values = sensor_matrix(n, seed=begin, first_row=begin)
            columns.update({s: pa.array(values[:, j]) for j, s in enumerate(SENSOR_NAMES)})
            table = pa.table(columns)
            if csv_writer is None:
                csv_writer = pcsv.CSVWriter(csv_path, table.schema)
                parquet_writer = pq.ParquetWriter(parquet_path, table.schema)
            csv_writer.write_table(table)
            assert parquet_writer is not None
            parquet_writer.write_table(table, row_group_size=PARQUET_ROW_GROUP)
    finally:
        if csv_writer is not None:
            csv_writer.close()
        if parquet_writer is not None:
            parquet_writer.close()
    return csv_path, parquet_path


# ------------------------------------------------------------------------------ measuring


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far (all its threads)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def child(side: str, path: str, bundle_dir: str, out_dir: str) -> dict[str, Any]:
    """One measurement, in its own process: returns seconds, rows and peak RSS."""
    if side == "ours":
        import pyarrow as pa

        pa.array([0])  # pyarrow imports pandas on first use when it is installed: not timed, as for pandas
        from zaindari.bundle import load_bundle
        from zaindari.file_scoring import FileScoring, FileSource
        from zaindari.local_ports import LocalFileSink
        from zaindari.scoring import get_scorer

        bundle = load_bundle(bundle_dir)
        get_scorer(bundle)
        scoring = FileScoring(model=lambda: bundle, sink=LocalFileSink(out_dir))
        cpu = cpu_seconds()
        started = time.perf_counter()
        with open(path, "rb") as stream:
            manifest = scoring.score_file(stream, FileSource(key=Path(path).name))
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
        assert manifest.status == "scored", manifest.error
        assert manifest.rows_in == manifest.rows_scored + manifest.rows_quarantined
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "rows": manifest.rows_in,
            "scored": manifest.rows_scored,
            "alert_rows": manifest.alert_rows,
            "alert_summaries": len(manifest.alerts),
            "chunks": manifest.chunks,
            "peak_rss_mib": peak_rss_mib(),
        }
    import onnxruntime as ort
    import pandas as pd

    bundle = Path(bundle_dir)
    features = json.loads((bundle / "signature.json").read_text())["features"]
    threshold = min(json.loads((bundle / "thresholds.json").read_text())["levels"].values())
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    cpu = cpu_seconds()
    started = time.perf_counter()
    frame = pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
    matrix = frame[features].to_numpy(dtype=np.float32)
    score = session.run(["score"], {session.get_inputs()[0].name: matrix})[0]
    alerts = int((score >= threshold).sum())
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "rows": len(frame),
        "scored": len(score),
        "alert_rows": alerts,
        "peak_rss_mib": peak_rss_mib(),
    }


def measure(side: str, path: Path, bundle_dir: Path, tmp: Path) -> dict[str, Any]:
    out_dir = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=tmp))
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure",
            side,
            str(path),
            str(bundle_dir),
            str(out_dir),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    info(
        f"  {side:8s} {path.name:18s} {result['seconds']:6.2f} s (CPU {result['cpu_seconds']:5.2f} s)"
        f"  {result['rows'] / result['seconds']:>11,.0f} rows/s  peak RSS {result['peak_rss_mib']:6.0f} MiB"
        f"  {json.dumps({k: v for k, v in result.items() if k not in ('seconds', 'cpu_seconds', 'peak_rss_mib')})}"
    )
    return result


def best(side: str, path: Path, bundle_dir: Path, tmp: Path) -> dict[str, Any]:
    runs = [measure(side, path, bundle_dir, tmp) for _ in range(REPEATS)]
    fastest = min(runs, key=lambda r: r["seconds"])
    return fastest | {"peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def main() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zaindari-bench-file-") as tmp_name:
        tmp = Path(tmp_name)
        began = time.perf_counter()
        bundle_dir = write_bundle(tmp / "bundle")
        small = write_files(tmp / "drop-1m", ROWS)
        big = write_files(tmp / "drop-4m", BIG_ROWS)
        info(
            f"files generated in {time.perf_counter() - began:.0f} s: "
            + ", ".join(f"{p.name} {p.stat().st_size / 2**20:,.0f} MiB" for p in (*small, *big))
            + f"; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
        )
        for (kind, path), big_path in zip((("CSV", small[0]), ("Parquet", small[1])), big, strict=True):
            baseline = best("baseline", path, bundle_dir, tmp)
            ours = best("ours", path, bundle_dir, tmp)
            large = measure("ours", big_path, bundle_dir, tmp)
            base_rate = baseline["rows"] / baseline["seconds"]
            our_rate = ours["rows"] / ours["seconds"]
            label = f"{kind} 1M x 24"
            rows.append(row(f"{label}: pandas whole file + one ONNX call", base_rate, "rows/s"))
            speedup = our_rate / base_rate
            rows.append(
                row(
                    f"{label}: score_file, streamed (validate, score, alerts, write)",
                    our_rate,
                    "rows/s",
                    baseline=base_rate,
                    ratio=speedup,
                    target=f">= {TARGET_CSV_SPEEDUP:g}x" if kind == "CSV" else None,
                    passed=speedup >= TARGET_CSV_SPEEDUP if kind == "CSV" else None,
                )
            )
            rows.append(row(f"{label}: peak RSS, pandas whole file", baseline["peak_rss_mib"], "MiB"))
            share = ours["peak_rss_mib"] / baseline["peak_rss_mib"]
            rows.append(
                row(
                    f"{label}: peak RSS, score_file",
                    ours["peak_rss_mib"],
                    "MiB",
                    baseline=baseline["peak_rss_mib"],
                    ratio=share,
                    target=f"<= {TARGET_RSS_SHARE:.2f}x",
                    passed=share <= TARGET_RSS_SHARE,
                )
            )
            growth = large["peak_rss_mib"] / ours["peak_rss_mib"]
            rows.append(
                row(
                    f"{kind} 4M x 24: peak RSS, score_file (baseline: 1M)",
                    large["peak_rss_mib"],
                    "MiB",
                    baseline=ours["peak_rss_mib"],
                    ratio=growth,
                    target=f"<= {TARGET_RSS_GROWTH:g}x",
                    passed=growth <= TARGET_RSS_GROWTH,
                )
            )
            rows.append(row(f"{kind} 4M x 24: score_file", large["rows"] / large["seconds"], "rows/s"))
            rows.append(
                row(
                    f"{label}: CPU time, score_file (baseline: pandas)",
                    ours["cpu_seconds"],
                    "s",
                    baseline=baseline["cpu_seconds"],
                    ratio=ours["cpu_seconds"] / baseline["cpu_seconds"],
                )
            )
            # how much of a second core each side got: ours runs three threads (reading,
            # scoring, outputs); on a busy machine (load average near the core count or above)
            # it gets about one core and its wall time follows its CPU time
            rows.append(
                row(
                    f"{label}: cores used, score_file (CPU / wall; baseline: pandas)",
                    ours["cpu_seconds"] / ours["seconds"],
                    "cores",
                    baseline=baseline["cpu_seconds"] / baseline["seconds"],
                )
            )
        load = os.getloadavg()[0]
        rows.append(row(f"load average (1 min) at the end, {os.cpu_count()} cores", load, "procs"))
        info(f"score_file bench done in {time.perf_counter() - began:.0f} s")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--measure":
        print(json.dumps(child(*sys.argv[2:6])), flush=True)
        os._exit(0)  # the measurement is out; skip native teardown (onnxruntime's and Arrow's threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import print_table

    print_table(main())
