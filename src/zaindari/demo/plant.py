"""The demo's plant and schedule: what is simulated, which days train the first model, which days
the historian drops as a file, and how the live readings travel (SQS, IoT rule, HTTP)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from zaindari.simulate import DriftEvent, FaultEvent, PlantConfig

__all__ = ["TRIGGERS", "DemoPlan", "demo_plan"]

Trigger = Literal["sqs", "iot", "http"]
TRIGGERS: tuple[Trigger, ...] = ("sqs", "iot", "http")
"""score_event's triggers the live stream uses, in turn, one delivery window after another."""


@dataclass(frozen=True)
class DemoPlan:
    """One demo run's inputs; everything else follows from these and the plant's seed.

    Parameters
    ----------
    name
        ``full`` or ``small``.
    plant
        The simulated plant (faults and drifts at known times).
    commissioning
        The first part of the run, when every machine is known healthy: the first model trains
        on it, and the historian drops it as one CSV file for ``score_batch``.
    delivery_window
        Live readings of all machines in one such window travel together, by one trigger (the
        triggers take turns).
    sqs_batch_size
        Records per SQS batch (the template's ``BatchSize``).
    payload_readings
        Most readings in one IoT or HTTP payload (a device gateway batching its publishes).
    after_retraining
        The last part of the run, held back from the live stream until drift monitoring has run
        and the retrained model is deployed: it shows which version the functions then score with.
    drift_window
        The plant time monitor_drift looks back over (ending where the held-back part starts).
    retrain_days
        Days of raw telemetry a drift-triggered retraining reads (ending on the drift check's day).
    edge_offline
        The share of the live stream (before the drift check) during which the edge box's link is
        down: its line's readings are scored and buffered on the box, then shipped when it is back.
    spark_master
        The local Spark the training job runs on.
    """

    name: str
    plant: PlantConfig
    commissioning: timedelta
    delivery_window: timedelta
    sqs_batch_size: int = 100
    payload_readings: int = 500
    spark_master: str = "local[2]"
    after_retraining: timedelta = timedelta(hours=6)
    drift_window: timedelta = timedelta(hours=24)
    retrain_days: int = 3
    edge_offline: float = 0.5

    @property
    def edge_line(self) -> str:
        """The line whose machines an edge box scores (the last one): its telemetry never reaches
        score_event or score_batch directly, the box ships its scores."""
        return f"line-{self.plant.lines}"

    @property
    def live_start(self) -> datetime:
        """First instant streamed live through ``score_event``."""
        return self.plant.start + self.commissioning

    @property
    def drift_check_at(self) -> datetime:
        """When (plant time) monitor_drift runs: the live stream up to here has been scored."""
        return self.plant.start + self.plant.duration - self.after_retraining


def _small_plant(seed: int) -> PlantConfig:
    """2 lines x (press, spindle), 3 days at 120 s (8,640 readings); three faults and one drift."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    day, hour = timedelta(days=1), timedelta(hours=1)
    return PlantConfig(
        seed=seed,
        lines=2,
        machines_per_line=2,
        start=start,
        duration=3 * day,
        sample_period_seconds=120.0,
        faults=(
            FaultEvent(
                device_id="plant-1-spindle-102",
                kind="bearing",
                onset=start + day + 6 * hour,
                failure=start + 2 * day + 12 * hour,
            ),
            FaultEvent(
                device_id="plant-1-press-201",
                kind="seal_leak",
                onset=start + day + 12 * hour,
                failure=start + 2 * day + 12 * hour,
            ),
            FaultEvent(
                device_id="plant-1-spindle-202",
                kind="cooling",
                onset=start + 2 * day,
                failure=start + 4 * day,  # beyond the run: still in fault at the end
            ),
        ),
        drifts=(
            DriftEvent(
                sensor="temperature",
                start=start + 2 * day,
                kind="offset",
                magnitude=3.0,
                devices=("plant-1-press-101",),
                ramp=2 * hour,
            ),
        ),
    )


def demo_plan(*, small: bool = False, seed: int = 0) -> DemoPlan:
    """The plan ``zaindari demo`` runs: the demo plant (14 days, 12 machines), or with ``small``
    a 3-day plant of 4 machines that runs in the test suite.

    The full plant is :meth:`PlantConfig.demo`: its first fault starts on day 5, so the first four
    days are commissioning.
    """
    if small:
        return DemoPlan(
            name="small",
            plant=_small_plant(seed),
            commissioning=timedelta(days=1),
            delivery_window=timedelta(hours=2),
        )
    return DemoPlan(
        name="full",
        plant=PlantConfig.demo(seed=seed),
        commissioning=timedelta(days=4),
        delivery_window=timedelta(hours=2),
        after_retraining=timedelta(days=1),
        drift_window=timedelta(hours=48),
        retrain_days=4,
    )
