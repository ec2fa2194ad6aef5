"""Train a model from a spec on Spark (local, Glue or EMR) and publish its verified ONNX bundle.

Trigger: ``start_retraining`` (a Glue job run or EMR step) or by hand. Use case:
``zaindari.training.train_model`` then ``publish_bundle``. Output: a bundle (model.onnx,
signature.json, spec.yaml, thresholds.json, metrics.json, lineage.json, parity.json,
MANIFEST.json) in a local folder or under an ``s3://`` prefix; a JSON summary line on stdout.
Exit code 1 with the reason on stderr when no model could be made (nothing is written then).

Local: ``python glue_jobs/train_model.py --master 'local[*]' --spec SPEC --input DATA --output DIR``
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from zaindari.spark_jobs import JobArgument, parse_job_arguments, spark_session

ARGUMENTS = (
    JobArgument("spec", None, "model spec (YAML/JSON): local path or s3://bucket/key"),
    JobArgument("input", None, "Parquet training set or raw table: local path, s3:// or any Hadoop path"),
    JobArgument("output", None, "bundle destination: local folder or s3://bucket/prefix/"),
    JobArgument(
        "start", "", "keep rows with time >= start (ISO 8601, or a number for a numeric time column)"
    ),
    JobArgument("end", "", "keep rows with time < end"),
    JobArgument("seed", "", "overrides spec.training.seed (asset split, search, parity sample)"),
    JobArgument(
        "scratch", "", "shared scratch path for saving tree ensembles on a cluster (e.g. Glue's TempDir)"
    ),
    JobArgument("version", "", "version recorded in MANIFEST.json (default: none; the registry assigns one)"),
    JobArgument("overwrite", "false", "true to replace a bundle already at --output"),
)


def _log(message: str) -> None:
    print(f"train_model: {message}", file=sys.stderr, flush=True)


def _stage_s3(prefix: str, folder: Path) -> str:
    """Local copies of the files under the ``s3://`` folder ``prefix`` (same relative paths)."""
    import os

    from zaindari.infra.s3_files import S3FileStore
    from zaindari.infra.wiring import client_factory

    store = S3FileStore(client_factory(dict(os.environ)))
    root = prefix.rstrip("/") + "/"
    store.download(store.list_files(root), folder, root)
    return str(folder)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, train, publish; 0 on success, 1 with the reason on stderr otherwise."""
    from zaindari.bundle import BundleError
    from zaindari.spec import SpecError
    from zaindari.training import TrainingError, check_output, publish_bundle, read_spec, train_model

    args = parse_job_arguments(ARGUMENTS, argv, description=__doc__.splitlines()[0])
    overwrite = str(args.get("overwrite") or "false").lower() == "true"
    try:
        spec = read_spec(str(args["spec"]))
        seed = int(args["seed"]) if args.get("seed") else None
        check_output(str(args["output"]), overwrite=overwrite)  # before hours of training, not after
    except (SpecError, TrainingError, ValueError) as exc:
        print(f"train_model failed: {exc}", file=sys.stderr)
        return 1
    staging = tempfile.TemporaryDirectory(prefix="zaindari-train-input-")
    data = str(args["input"])
    if args.get("master") and data.startswith("s3://"):
        # a local Spark has no S3 filesystem: stage the input through boto3 (Glue/EMR read s3:// natively)
        data = _stage_s3(data, Path(staging.name))
    spark = spark_session(
        f"zaindari-train-{spec.name}",
        args.get("master"),
        **{"spark.sql.execution.arrow.pyspark.enabled": "true"},  # fast collection of held-out scores
    )
    try:
        trained = train_model(
            spark,
            spec,
            data,
            start=args.get("start") or None,
            end=args.get("end") or None,
            seed=seed,
            scratch_dir=args.get("scratch") or None,
            log=_log,
        )
        location = publish_bundle(
            trained,
            str(args["output"]),
            overwrite=overwrite,
            version=args.get("version") or None,
        )
    except (SpecError, TrainingError, BundleError) as exc:
        print(f"train_model failed: {exc}", file=sys.stderr)
        return 1
    finally:
        staging.cleanup()
    summary = {
        "bundle": location,
        "model": spec.name,
        "task": spec.task,
        "parameters": trained.fitted.parameters,
        "thresholds": trained.fitted.thresholds.levels,
        "parity_max_abs_diff": trained.parity["max_abs_diff"],
        "rows": trained.metrics["rows"],
    }
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
