"""build_training_set on Glue 5, EMR (Serverless) or local Spark: raw telemetry for --start..--end
-> contract and spec checks, features (zaindari.training_set) -> Parquet training set by date,
rows set aside with their reason, _data_version.json. Arguments: glue_jobs/README.md."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from zaindari.spark_jobs import JobArgument, parse_job_arguments, spark_session

ARGUMENTS = [
    JobArgument(
        "lake", None, "the lake: s3://bucket or a local folder holding raw/telemetry/date=YYYY-MM-DD/"
    ),
    JobArgument("start", None, "first day of raw telemetry, YYYY-MM-DD (UTC, inclusive)"),
    JobArgument("end", None, "last day of raw telemetry, YYYY-MM-DD (UTC, inclusive)"),
    JobArgument("spec", None, "the model spec (YAML/JSON): s3:// URI or local path"),
    JobArgument(
        "output", "", "where the training set goes (default <lake>/training/sets/<spec name>/<start>_<end>/)"
    ),
    JobArgument(
        "rejected",
        "",
        "where rows set aside go (default <lake>/training/rejected/<spec name>/<start>_<end>/)",
    ),
    JobArgument(
        "maintenance",
        "",
        "the plant's maintenance log, JSON Lines of known fault windows whose rows are left out "
        "(default <lake>/labels/maintenance/; none there: nothing is left out)",
    ),
    JobArgument("scratch", "", "local folder for staged S3 copies on local runs (default: a temporary one)"),
]


def _day(name: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"build_training_set: --{name} {text!r} is not a date (YYYY-MM-DD)") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, wire the file store and Spark, build; 0 on success, 2 on a clear failure."""
    args = parse_job_arguments(ARGUMENTS, argv, description=__doc__ or "")
    from zaindari.file_store import FileStoreError, RoutingFileStore
    from zaindari.infra.s3_files import S3FileStore
    from zaindari.infra.wiring import client_factory
    from zaindari.maintenance import MAINTENANCE_PREFIX, MaintenanceError, read_maintenance_log
    from zaindari.spec import SpecError, load_spec
    from zaindari.training_set import (
        TrainingSetError,
        build_training_set,
        find_inputs,
        no_input_error,
    )

    lake = str(args["lake"]).rstrip("/")
    start, end = _day("start", str(args["start"])), _day("end", str(args["end"]))
    store = RoutingFileStore(s3=S3FileStore(client_factory(dict(os.environ))))
    try:
        spec = load_spec(store.read_bytes(str(args["spec"])).decode("utf-8"))
    except (FileStoreError, SpecError, OSError, UnicodeDecodeError) as exc:
        print(f"build_training_set: spec {args['spec']}: {exc}", file=sys.stderr)
        return 2
    try:
        inputs = find_inputs(store, lake, start, end)  # before Spark starts: an empty range fails fast
        if not inputs:
            raise no_input_error(lake, start, end)
    except (TrainingSetError, FileStoreError) as exc:
        print(f"build_training_set: {exc}", file=sys.stderr)
        return 2
    log_uri = args["maintenance"] or f"{lake}/{MAINTENANCE_PREFIX}/"
    try:
        maintenance = read_maintenance_log([f.uri for f in store.list_files(log_uri)], store.read_bytes)
    except (MaintenanceError, FileStoreError, OSError) as exc:
        print(f"build_training_set: maintenance log {log_uri}: {exc}", file=sys.stderr)
        return 2
    span = f"{start.isoformat()}_{end.isoformat()}"
    output = args["output"] or f"{lake}/training/sets/{spec.name}/{span}/"
    rejected = args["rejected"] or f"{lake}/training/rejected/{spec.name}/{span}/"
    master = args["master"]
    with tempfile.TemporaryDirectory(prefix="zaindari-training-set-") as default_scratch:
        scratch = Path(args["scratch"] or default_scratch)
        spark = spark_session("zaindari-build-training-set", master)
        try:
            version = build_training_set(
                spark,
                spec,
                lake=lake,
                start=start,
                end=end,
                output=output,
                rejected=rejected,
                store=store,
                # a local Spark has no S3 filesystem: stage S3 data through boto3 (Glue/EMR read s3:// natively)
                stage_s3=master is not None,
                scratch=scratch,
                spec_uri=str(args["spec"]),
                inputs=inputs,
                maintenance=maintenance,
            )
        except (TrainingSetError, FileStoreError) as exc:
            print(f"build_training_set: {exc}", file=sys.stderr)
            return 2
    summary = {k: version[k] for k in ("data_version", "rows", "devices", "content_hash", "outputs")}
    summary["maintenance"] = {"log": log_uri, "windows": len(maintenance.windows)}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    code = main()
    if code:  # exit only on failure: returning ends a Glue run as succeeded
        sys.exit(code)
