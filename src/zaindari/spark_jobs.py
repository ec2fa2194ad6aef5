"""What every Spark job shares: its arguments (Glue, EMR or local) and its session.

One script runs three ways: locally (``python glue_jobs/<job>.py --master 'local[*]' ...``), on AWS
Glue (arguments come through ``awsglue.utils.getResolvedOptions`` when ``awsglue`` is importable),
and on EMR / EMR Serverless (``spark-submit glue_jobs/<job>.py ...``, the plain argparse path).
Nothing here imports pyspark until a session is asked for.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["JobArgument", "parse_job_arguments", "spark_session"]


@dataclass(frozen=True)
class JobArgument:
    """One job argument: its name (``--name``), default (``None`` = required) and help text."""

    name: str
    default: str | None
    help: str


def _on_glue() -> bool:
    try:
        import awsglue.utils  # noqa: F401
    except ImportError:
        return False
    return True


def parse_job_arguments(
    arguments: Sequence[JobArgument], argv: Sequence[str] | None = None, *, description: str = ""
) -> dict[str, str | None]:
    """Parse the job's arguments from ``argv`` (default ``sys.argv[1:]``).

    On Glue, ``getResolvedOptions`` reads the required ones (Glue passes ``--name value`` pairs
    plus its own); optional ones fall back to their defaults when Glue did not pass them.
    Elsewhere argparse parses ``--name value`` and ``--master``.
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    if _on_glue():
        from awsglue.utils import getResolvedOptions

        present = {a.name for a in arguments if f"--{a.name}" in raw}
        required = [a.name for a in arguments if a.default is None or a.name in present]
        resolved = getResolvedOptions(["job", *raw], required)
        values: dict[str, str | None] = {a.name: a.default for a in arguments}
        values.update({k: v for k, v in resolved.items() if k in values})
        values["master"] = None
        return values
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--master", default=None, help="Spark master for local runs, e.g. local[*]")
    for a in arguments:
        parser.add_argument(f"--{a.name}", default=a.default, required=a.default is None, help=a.help)
    return vars(parser.parse_args(raw))


def spark_session(app_name: str, master: str | None = None, **conf: str) -> Any:
    """The job's Spark session: Glue's or EMR's when ``master`` is None, a local one otherwise."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = (
            builder.master(master)
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "8")
        )
    builder = builder.config("spark.sql.session.timeZone", "UTC")
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
