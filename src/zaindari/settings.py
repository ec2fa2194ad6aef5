"""Settings: one validated model of every knob, filled by each runtime from its own source.

The core never reads the environment. An adapter calls :meth:`Settings.from_env` once per
container with ``os.environ`` (Lambda), the environment plus OpenFaaS secret files (edge), or Glue
job arguments, so a bad value fails the first invocation with a message naming the variable.
Each field ``foo_bar`` is read from ``ZAINDARI_FOO_BAR``; explicit keyword arguments win.
The README's settings table is generated from this model (``zaindari settings``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zaindari.contract import ContractLimits

__all__ = ["ENV_PREFIX", "Settings", "SettingsError"]

ENV_PREFIX = "ZAINDARI_"


class SettingsError(ValueError):
    """Configuration is invalid; the message names each offending variable."""


class Settings(BaseModel):
    """Every setting, with its default. See the README's table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- model
    model_path: str | None = Field(
        default=None,
        description="Model bundle: a local folder or an s3://bucket/prefix/ holding MANIFEST.json.",
    )
    model_cache_dir: str = Field(default="/tmp/zaindari/models", description="Where bundles are unpacked.")
    onnx_threads: int = Field(default=1, ge=1, le=64, description="onnxruntime intra_op_num_threads.")
    # -- contract limits
    max_payload_bytes: int = Field(default=256 * 1024, gt=0, description="Largest accepted payload.")
    max_sensors: int = Field(default=256, gt=0, description="Most sensor values in one reading.")
    max_batch_readings: int = Field(default=10_000, gt=0, description="Most readings in one payload.")
    max_future_skew_seconds: float = Field(
        default=300.0, ge=0, description="How far ahead of the clock a timestamp may be."
    )
    # -- AWS resources (names, not clients: wiring lives in the adapters)
    lake_bucket: str = Field(
        default="zaindari-lake", description="Bucket for scores/, raw/, quarantine/, models/."
    )
    state_table: str = Field(default="zaindari-device-state", description="DynamoDB table of device state.")
    alert_topic_arn: str | None = Field(default=None, description="SNS topic for alerts to people.")
    event_bus_name: str = Field(default="default", description="EventBridge bus for machine-readable events.")
    state_ttl_days: float = Field(
        default=14.0, gt=0, description="Device state expires after this idle time."
    )
    scores_format: Literal["jsonl.gz", "parquet"] = Field(
        default="jsonl.gz",
        description="Lake file format for event scores (jsonl.gz keeps pyarrow out of the cold start).",
    )
    dedup_memory: int = Field(
        default=512, ge=16, le=4096, description="Recent reading keys each device remembers for idempotency."
    )
    log_level: str = Field(default="INFO", description="Powertools logger level.")
    # -- retraining (start_retraining)
    training_runner: Literal["glue", "emr-serverless"] = Field(
        default="glue", description="What runs the Spark jobs: Glue job runs or EMR Serverless job runs."
    )
    runs_table: str = Field(
        default="zaindari-retraining-runs",
        description="DynamoDB table of retraining runs: one lock per model, each run's triggers.",
    )
    build_training_set_job: str = Field(
        default="zaindari-build-training-set",
        description="Glue job (or EMR run name) building training sets.",
    )
    train_model_job: str = Field(
        default="zaindari-train-model", description="Glue job (or EMR run name) training a model."
    )
    training_spec_uri: str = Field(
        default="{lake}/specs/{model}.yaml",
        description="A model's spec for training; {lake} is s3://<lake bucket>, {model} the model name.",
    )
    retrain_models: str = Field(
        default="plant-anomaly", description="Models the schedule retrains (comma-separated)."
    )
    retrain_lookback_days: int = Field(
        default=28, ge=1, le=3660, description="Days of raw telemetry a scheduled or drift run trains on."
    )
    retrain_start_attempts: int = Field(
        default=3, ge=1, le=10, description="Attempts to start a job before alerting (transient failures)."
    )
    retrain_backoff_seconds: float = Field(
        default=1.0, ge=0, le=60, description="First wait between start attempts; doubles each time."
    )
    retrain_lease_hours: float = Field(
        default=12.0, gt=0, description="A run's lock expires this long after its last stage started."
    )
    emr_application_id: str | None = Field(
        default=None, description="EMR Serverless application (ZAINDARI_TRAINING_RUNNER=emr-serverless)."
    )
    emr_execution_role_arn: str | None = Field(
        default=None, description="IAM role EMR Serverless job runs assume."
    )
    emr_scripts_uri: str | None = Field(
        default=None, description="s3:// prefix holding build_training_set.py and train_model.py for EMR."
    )
    emr_spark_submit_parameters: str = Field(
        default="", description="sparkSubmitParameters of EMR Serverless job runs (e.g. the venv archive)."
    )
    # -- file drops (score_batch)
    file_runs_table: str = Field(
        default="zaindari-file-runs",
        description="DynamoDB ledger of file drops: one item per object version (claims, parts, outcome).",
    )
    file_parts_queue_url: str | None = Field(
        default=None, description="SQS queue of fan-out parts; unset: large files are scored in one go."
    )
    fanout_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description="Drops larger than this are split into parts scored in parallel (CSV, JSON Lines, Parquet).",
    )
    part_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="Target size of one fan-out part, in bytes."
    )
    spark_bytes: int = Field(
        default=0, ge=0, description="Drops larger than this go to the Spark (Glue) job; 0: never."
    )
    score_file_job: str = Field(
        default="zaindari-score-file", description="Glue job scoring the drops above ZAINDARI_SPARK_BYTES."
    )
    file_lease_seconds: float = Field(
        default=900.0,
        gt=0,
        description="A claim on a drop lapses after this (a crashed run's drop is retried).",
    )
    file_stale_hours: float = Field(
        default=6.0, gt=0, description="A fan-out or Spark run not finished after this may be started again."
    )
    file_spool_dir: str = Field(
        default="/tmp/zaindari/spool", description="Where a run's outputs wait for commit (Lambda: /tmp)."
    )
    file_keep_columns: str = Field(
        default="",
        description="Columns of a drop copied into its scores as text, comma-separated (e.g. `batch,operator`); "
        "the Spark job gets the same list.",
    )
    # -- model registry and promotion gate
    registry_table: str = Field(
        default="zaindari-model-registry",
        description="DynamoDB table of the model registry: versions, aliases, audit history.",
    )
    promotion_tolerance: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="How much worse (relative to production's value) a challenger's metric may be.",
    )
    promotion_alert_rate_bound: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description=(
            "Largest allowed difference of shadow alert rates (share of readings), challenger vs production; "
            "with a maintenance log, one way on each side: on known faults the challenger may alert at most "
            "this much less, elsewhere at most this much more."
        ),
    )
    promotion_manual_approval: bool = Field(
        default=False, description="A challenger that passes the gate waits for a named approver."
    )
    # -- drift monitoring (monitor_drift; summaries written by every scoring path)
    drift_summaries: bool = Field(
        default=True,
        description="Scoring writes per-hour window summaries to summaries/ (bundles with a baseline).",
    )
    drift_state_table: str = Field(
        default="zaindari-drift-state", description="DynamoDB table: the last drift trigger per model."
    )
    drift_window_hours: int = Field(
        default=24,
        ge=1,
        le=24 * 90,
        description="monitor_drift compares the last this-many hours with the baseline.",
    )
    drift_min_interval_hours: float = Field(
        default=168.0, ge=0, description="At most one drift-triggered retraining per model within this time."
    )
    drift_min_readings: int = Field(
        default=1000, ge=1, description="A window with fewer scored readings gives no drift verdict."
    )
    drift_psi: float = Field(
        default=0.5, gt=0, description="A feature drifts at or above this PSI (and KS D)."
    )
    drift_ks: float = Field(
        default=0.2, gt=0, le=1, description="A feature drifts at or above this binned KS D (and PSI)."
    )
    drift_score_psi: float = Field(
        default=0.5, gt=0, description="The model's score drifts at or above this PSI."
    )
    drift_missing_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Alert people when a sensor is missing from more of the readings.",
    )
    drift_out_of_range_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Alert people when more of a sensor's readings are out of range.",
    )
    drift_alert_rate_change: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Alert people when the share of alerting readings moves more than this between windows.",
    )
    # -- deployment (register_model, deploy_model) and registry:// model references
    model_alias_ttl_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a registry://<model>/<alias> model path is trusted before the alias is read again.",
    )
    shadow_readings: int = Field(
        default=2000, ge=10, le=100_000, description="Recent raw readings the promotion gate shadow-scores."
    )
    sagemaker_model_registry: bool = Field(
        default=True,
        description="Mirror each version into a SageMaker Model Package Group named after the model.",
    )
    sagemaker_image_uri: str | None = Field(
        default=None,
        description="Serving container image (ECR URI); unset: no SageMaker endpoint is deployed.",
    )
    sagemaker_execution_role_arn: str | None = Field(
        default=None, description="IAM role the SageMaker model runs as (reads the bundle from the lake)."
    )
    sagemaker_endpoint_name: str = Field(
        default="zaindari-{model}", description="SageMaker endpoint of a model; {model} is the model name."
    )
    sagemaker_serverless_memory_mb: int = Field(
        default=2048,
        ge=1024,
        le=6144,
        multiple_of=1024,
        description="Serverless inference memory of the endpoint (1024 to 6144, in steps of 1024).",
    )
    sagemaker_serverless_max_concurrency: int = Field(
        default=5, ge=1, le=200, description="Serverless inference concurrent invocations of the endpoint."
    )
    model_update_topic: str = Field(
        default="zaindari/models/{model}/update",
        description="IoT topic of the edge's model-update events; {model} is the model name; empty: none.",
    )
    presigned_url_seconds: int = Field(
        default=86400, ge=60, le=604800, description="Validity of the bundle URLs in model-update events."
    )
    # -- edge box, offline side (zaindari.edge: buffer, local alerts, model sync)
    edge_box_id: str = Field(
        default="edge-1",
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="Names this box in the objects it ships and in its acks.",
    )
    edge_buffer_path: str = Field(
        default="/var/lib/zaindari/edge/buffer.db",
        description="The box's SQLite store-and-forward buffer (and its device state).",
    )
    edge_buffer_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024 * 1024,
        description="Buffer bound; past it the oldest raw scores become hourly summaries (alerts are never dropped).",
    )
    edge_buffer_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL: each answered request is on disk (survives a power cut); NORMAL: survives a crash only, ~5x cheaper.",
    )
    edge_ship_backoff_seconds: float = Field(
        default=1.0, gt=0, le=60, description="First wait after a failed shipment; doubles each time."
    )
    edge_ship_backoff_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest wait between shipment attempts while the link is down."
    )
    edge_model_dir: str = Field(
        default="/var/lib/zaindari/edge/models",
        description="The box's model store: installed bundles, current.json, golden.jsonl.",
    )
    edge_max_golden_alert_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Share of the golden (normal) readings a new model may flag before it is refused.",
    )
    edge_rollback_after_errors: int = Field(
        default=3, ge=1, le=1000, description="Consecutive failed live batches that roll a new model back."
    )
    edge_mqtt_host: str | None = Field(
        default=None, description="Local MQTT broker for alerts; unset: no MQTT."
    )
    edge_mqtt_port: int = Field(default=1883, ge=1, le=65535, description="Local MQTT broker port.")
    edge_mqtt_topic: str = Field(
        default="zaindari/alerts/{device_id}",
        description="MQTT topic of alerts ({device_id}, {site}, {line}, {asset}, {severity}, {kind}, {rule_id}).",
    )
    edge_webhook_url: str | None = Field(
        default=None, description="Webhook that receives each alert; unset: none."
    )
    edge_uplink: Literal["none", "aws"] = Field(
        default="none",
        description="aws: the edge server ships its buffer to lake_bucket and event_bus_name (endpoint and "
        "credentials from AWS_*) and fetches model updates from S3; none: the box stays offline.",
    )
    # -- edge (OpenFaaS functions and `zaindari edge serve`)
    edge_secrets_dir: str = Field(
        default="/var/openfaas/secrets",
        description="Folder of the edge's secret files (OpenFaaS mounts them here): the endpoints' token, "
        "mqtt-username, mqtt-password, webhook-token.",
    )
    edge_token_secret: str = Field(
        default="zaindari-edge-token",
        description="Secret file holding the bearer token(s) the edge endpoints accept (one per line).",
    )
    edge_data_dir: str = Field(
        default="/var/lib/zaindari",
        description="Edge box folder where score-file stages a file's outputs (spool/) until they enter the buffer.",
    )
    edge_max_file_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest file the edge's score-file accepts."
    )

    @property
    def limits(self) -> ContractLimits:
        return ContractLimits(
            max_payload_bytes=self.max_payload_bytes,
            max_sensors=self.max_sensors,
            max_batch_readings=self.max_batch_readings,
            max_future_skew_seconds=self.max_future_skew_seconds,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build from ``ZAINDARI_*`` variables in ``env``; ``overrides`` beat the environment.

        Raises
        ------
        SettingsError
            Naming each variable whose value is invalid.
        """
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env and env[key] != "":
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(e['loc'][0]).upper() if e['loc'] else ''}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise SettingsError(f"invalid configuration: {problems}") from exc

    @classmethod
    def markdown_table(cls) -> str:
        """The README's settings table."""
        lines = ["| variable | default | meaning |", "|---|---|---|"]
        lines += [
            f"| `{var}` | `{default}` | {text} |" if default else f"| `{var}` | | {text} |"
            for var, default, text in cls.table()
        ]
        return "\n".join(lines)

    @classmethod
    def table(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting: the README's table."""
        rows = []
        for name, info in cls.model_fields.items():
            default = info.default
            rows.append(
                (ENV_PREFIX + name.upper(), "" if default is None else str(default), info.description or "")
            )
        return rows
