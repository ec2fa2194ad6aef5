"""Score one large file drop on Spark (Glue, EMR or local) with the same ONNX model as score_batch.

Trigger: ``score_batch`` starts a Glue job run for drops above ``ZAINDARI_SPARK_BYTES`` (or by hand).
Use case: ``zaindari.file_scoring_spark.score_file_on_spark`` (``FileScoring`` per partition,
``mapInPandas``). Output: ``scores/date=YYYY-MM-DD/<source_id>-sNNNNN.parquet``,
``quarantine/date=YYYY-MM-DD/<source_id>-sNNNNN.jsonl``, the drift window summaries under ``summaries/``
(as score_batch writes them) and ``manifests/<source_id>.json`` in the lake
(a failed manifest and ``quarantine/files/`` for a file that cannot be scored); a JSON summary on
stdout. Exit 0 when a manifest was written (scored or failed), 1 when the job itself failed (nothing
is recorded: score_batch releases the drop on the job's state change, the next delivery retries),
2 for arguments it refuses (a local run given an s3:// lake, a refused ``--keep_columns`` list).

Local: ``python glue_jobs/score_file.py --master 'local[*]' --input drop.csv --lake ./lake --model BUNDLE``
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from zaindari.spark_jobs import JobArgument, parse_job_arguments, spark_session

ARGUMENTS = (
    JobArgument("input", None, "the drop: s3://bucket/key (Glue, EMR) or a local file"),
    JobArgument("lake", None, "the lake's root: s3://bucket or a local folder"),
    JobArgument("model", None, "model bundle: s3://bucket/prefix/ or a local folder"),
    JobArgument("key", "", "the drop's object key as the lake names it (default: from --input)"),
    JobArgument("bucket", "", "the drop's bucket (default: from an s3:// --input)"),
    JobArgument("etag", "", "the drop's ETag (names its outputs with the version)"),
    JobArgument("version", "", "the drop's version id (names its outputs)"),
    JobArgument("size", "", "the drop's size in bytes (informational)"),
    JobArgument("partitions", "", "partitions to score in (default: Spark's default parallelism)"),
    JobArgument(
        "staging", "", "where Spark writes before files move into the lake (default <lake>/_staging/)"
    ),
    JobArgument(
        "keep_columns", "", "columns copied into the scores as text, comma-separated (score_batch's list)"
    ),
)


def _log(message: str) -> None:
    print(f"score_file: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, score the file, write its outputs; see the module docstring for exit codes."""
    from zaindari.bundle import BundleError
    from zaindari.file_scoring import FileScoringOptions, FileSource
    from zaindari.file_scoring_spark import score_file_on_spark

    args = parse_job_arguments(ARGUMENTS, argv, description=__doc__.splitlines()[0])
    try:
        options = FileScoringOptions.keeping(str(args.get("keep_columns") or ""), source="--keep_columns")
    except ValueError as exc:
        print(f"score_file failed: {exc}", file=sys.stderr)
        return 2
    uri = str(args["input"])
    key = str(args.get("key") or "")
    bucket = str(args.get("bucket") or "")
    if uri.startswith("s3://"):
        bucket_part, _, key_part = uri[len("s3://") :].partition("/")
        bucket, key = bucket or bucket_part, key or key_part
    source = FileSource(
        key=key or PurePosixPath(uri).name,
        bucket=bucket or None,
        etag=args.get("etag") or None,
        version_id=args.get("version") or None,
        size=int(args["size"]) if args.get("size") else None,
    )
    master = args.get("master")
    if master:  # local: executors run this interpreter (its venv has the core and pandas)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    scratch = Path(tempfile.mkdtemp(prefix="zaindari-score-file-"))
    try:
        bundle_dir = _local_model(str(args["model"]), scratch)
        if master and uri.startswith("s3://"):
            uri = _staged_input(source, scratch)  # a local Spark has no s3:// file system offline
    except (BundleError, OSError) as exc:
        print(f"score_file failed: {exc}", file=sys.stderr)
        return 1
    if master and str(args["lake"]).startswith("s3://"):
        print(
            "score_file failed: a local run writes to a local --lake (Spark has no s3:// here)",
            file=sys.stderr,
        )
        return 2
    spark = spark_session(
        f"zaindari-score-file-{source.source_id}",
        master,
        **{"spark.sql.execution.arrow.pyspark.enabled": "true"},
    )
    _log(f"scoring {uri} as {source.key} ({source.source_id})")
    manifest = score_file_on_spark(
        spark,
        uri,
        source,
        bundle_dir,
        str(args["lake"]),
        partitions=int(args["partitions"]) if args.get("partitions") else None,
        staging=args.get("staging") or None,
        options=options,
    )
    summary = {
        "manifest": f"{str(args['lake']).rstrip('/')}/manifests/{manifest.source_id}.json",
        **manifest.model_dump(
            mode="json",
            include={"status", "error", "rows_in", "rows_scored", "rows_quarantined", "alert_rows", "parts"},
        ),
        "alerts": len(manifest.alerts),
    }
    print(json.dumps(summary))
    return 0


def _local_model(model: str, scratch: Path) -> Path:
    """The bundle as a local folder (downloaded once when it lives in S3)."""
    if not model.startswith("s3://"):
        return Path(model)
    from zaindari.infra.model_store import download_bundle
    from zaindari.infra.wiring import client_factory

    return download_bundle(client_factory(), model, scratch / "models")


def _staged_input(source: object, scratch: Path) -> str:
    """The drop copied from S3 to local disk (local runs against moto or LocalStack)."""
    from zaindari.file_scoring import FileSource
    from zaindari.infra.file_ports import S3DropObjects
    from zaindari.infra.wiring import client_factory

    assert isinstance(source, FileSource)
    target = scratch / "input" / PurePosixPath(source.key).name
    target.parent.mkdir(parents=True, exist_ok=True)
    stream = S3DropObjects(client_factory()).open(source, seekable=False)
    with target.open("wb") as out:
        while block := stream.read(8 << 20):
            out.write(block)
    return str(target)


if __name__ == "__main__":
    sys.exit(main())
