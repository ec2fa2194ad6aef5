"""Model sync on the box: a good update is verified, smoke-tested and swapped in; a corrupt one, or
one that fails its smoke test, is refused while the old model keeps serving; a model that errors on
live traffic is rolled back by itself; an update that cannot be fetched waits for the link."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.edge_support import (
    alarming_thresholds,
    bundle_variant,
    erroring_model,
    golden_readings,
    update_for,
)
from tests.support import plant_readings
from zaindari.alerting import Alert
from zaindari.bundle import BundleError, ModelBundle
from zaindari.edge.box import EdgeBox
from zaindari.edge.buffer import BufferedAlerts, EdgeBuffer
from zaindari.edge.local_alerts import LocalAlerts
from zaindari.edge.model_sync import (
    LocalBundleFetcher,
    LocalModelStore,
    ModelSync,
    smoke_test,
    write_golden,
)
from zaindari.event_scoring import InboundRecord
from zaindari.ports import PortError
from zaindari.registry_events import ModelUpdate


@pytest.fixture(scope="module")
def readings() -> list[dict[str, Any]]:
    return plant_readings()


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, bundle: ModelBundle) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    model, signature = erroring_model(bundle, feature="temperature", above=100.0)
    return {
        "v2": bundle_variant(bundle, root / "v2", version="2"),
        "alarming": bundle_variant(
            bundle, root / "alarming", version="3", thresholds=alarming_thresholds(bundle)
        ),
        "erroring": bundle_variant(bundle, root / "erroring", version="4", model=model, signature=signature),
    }


@pytest.fixture
def sync(tmp_path: Path, bundle_dir: Path, readings: list[dict[str, Any]]) -> ModelSync:
    store = LocalModelStore(tmp_path / "models")
    write_golden(store.golden_path, golden_readings(readings))
    events: list[dict[str, Any]] = []
    sync = ModelSync(store, LocalBundleFetcher(), rollback_after_errors=3, on_event=events.append)
    sync.seed(bundle_dir, version="1")
    sync.events = events  # type: ignore[attr-defined]
    return sync


def test_update_is_verified_smoke_tested_and_swapped_in(sync: ModelSync, variants: dict[str, Path]) -> None:
    outcome = sync.apply(update_for(variants["v2"], str(variants["v2"]), "2"))
    assert (outcome.status, outcome.serving) == ("applied", "2")
    assert sync.current().version == "2"
    pointer = json.loads(sync.store.pointer_path.read_text())
    assert (pointer["current"]["version"], pointer["previous"]["version"]) == ("2", "1")
    assert sync.events[-1]["event"] == "model_applied"  # type: ignore[attr-defined]
    # the same event again changes nothing
    assert sync.apply(update_for(variants["v2"], str(variants["v2"]), "2")).status == "unchanged"


def test_corrupt_update_is_refused_and_the_old_model_keeps_serving(
    sync: ModelSync, variants: dict[str, Path], tmp_path: Path
) -> None:
    # Given an update whose model file was damaged after its hashes were taken
    corrupt = tmp_path / "corrupt"
    shutil.copytree(variants["v2"], corrupt)
    data = bytearray((corrupt / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "model.onnx").write_bytes(bytes(data))
    # When it is applied
    outcome = sync.apply(update_for(variants["v2"], str(corrupt), "2"))
    # Then it is refused with the file named, nothing changed, and the cloud is told
    assert outcome.status == "refused"
    assert "model.onnx" in outcome.reason and "sha256" in outcome.reason
    assert sync.current().version == "1"
    assert sync.events[-1]["event"] == "model_refused"  # type: ignore[attr-defined]
    assert not any(p.name.startswith("plant-anomaly-2-") for p in sync.store.bundles.iterdir())


def test_update_whose_manifest_disagrees_with_the_event_is_refused(
    sync: ModelSync, variants: dict[str, Path]
) -> None:
    # A bundle re-hashed consistently by whoever changed it: the event's hashes are the anchor
    update = update_for(variants["v2"], str(variants["alarming"]), "2")
    outcome = sync.apply(update)
    assert outcome.status == "refused" and "disagrees with the update's hashes" in outcome.reason
    assert sync.current().version == "1"


def test_update_event_with_unsafe_names_or_bad_hashes_is_invalid() -> None:
    good = {
        "model.onnx": "a" * 64,
        "signature.json": "b" * 64,
        "spec.yaml": "c" * 64,
        "thresholds.json": "d" * 64,
    }
    with pytest.raises(ValueError, match="unsafe"):
        ModelUpdate(model="m", version="2", artifact_uri="s3://b/p/", sha256={**good, "../x": "e" * 64})
    with pytest.raises(ValueError, match="64 lowercase hex"):
        ModelUpdate(model="m", version="2", artifact_uri="s3://b/p/", sha256={**good, "model.onnx": "xyz"})
    assert ModelUpdate(model="m", version="7", artifact_uri="s3://b/p/", sha256=good).version == 7  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ModelUpdate(model="m", version=0, artifact_uri="s3://b/p/", sha256=good)
    urls = {name: f"https://b.s3/p/{name}" for name in [*good, "MANIFEST.json"]}
    assert ModelUpdate(model="m", version="2", artifact_uri="s3://b/p/", sha256=good, urls=urls).urls == urls
    with pytest.raises(ValueError, match="urls must name exactly"):
        ModelUpdate(
            model="m", version="2", artifact_uri="s3://b/p/", sha256=good, urls={"model.onnx": "https://x"}
        )


def test_model_failing_its_smoke_test_never_serves(sync: ModelSync, variants: dict[str, Path]) -> None:
    outcome = sync.apply(update_for(variants["alarming"], str(variants["alarming"]), "3"))
    assert outcome.status == "refused"
    assert "smoke test failed" in outcome.reason and "golden (normal) readings" in outcome.reason
    assert sync.current().version == "1"


def test_smoke_test_fails_on_missing_golden_inputs_and_sensors_the_model_needs(
    bundle: ModelBundle, readings: list[dict[str, Any]]
) -> None:
    assert not smoke_test(bundle, []).passed
    without_pressure = [
        {**r, "sensors": {k: v for k, v in r["sensors"].items() if k != "pressure"}}
        for r in golden_readings(readings, 5)
    ]
    result = smoke_test(bundle, without_pressure)
    assert not result.passed and "cannot score" in result.reason
    passed = smoke_test(bundle, golden_readings(readings))
    assert passed.passed and passed.scored == 80 and passed.alert_rate <= 0.2


def test_model_erroring_on_live_traffic_is_rolled_back_and_not_applied_again(
    tmp_path: Path, sync: ModelSync, variants: dict[str, Path], readings: list[dict[str, Any]]
) -> None:
    # Given a box whose new model passed its smoke test (normal readings score fine)
    box = EdgeBox(buffer=EdgeBuffer(tmp_path / "edge.db"), sync=sync, box_id="b")
    erroring = update_for(variants["erroring"], str(variants["erroring"]), "4")
    assert box.apply_update(erroring).status == "applied"
    normal = [InboundRecord("n", readings[800:804], "t")]
    assert len(box.score_records(normal).scored) == 4
    # When live traffic makes it fail three batches in a row
    hot = [{**r, "sensors": {**r["sensors"], "temperature": 120.0}} for r in readings[804:816]]
    for i in range(2):
        with pytest.raises(Exception, match=r"out of data bounds"):
            box.score_records([InboundRecord(f"h{i}", hot[4 * i : 4 * i + 4], "t")])
    report = box.score_records([InboundRecord("h2", hot[8:12], "t")])
    # Then the box rolled back by itself and scored that batch with the restored model
    assert sync.current().version == "1"
    assert len(report.scored) == 4 and report.model_version == sync.current().model_version
    acks = [a for a in sync.events if a["event"] == "model_rolled_back"]  # type: ignore[attr-defined]
    assert (
        acks and acks[-1]["rolled_back_version"] == "4" and "consecutive scoring errors" in acks[-1]["reason"]
    )
    assert box.buffer.stats().items["ack"] >= 2  # applied, rolled back: shipped as Edge Acks
    # and the same update is refused if it comes again
    again = box.apply_update(erroring)
    assert again.status == "refused" and "rolled back before" in again.reason
    box.close()


def test_a_scored_batch_does_not_wait_for_an_update_being_applied(sync: ModelSync) -> None:
    # the edge server scores on its event loop: an update downloading and smoke-testing (holding
    # the sync's lock for seconds) must not stall it; a failed batch below the count does not either
    held, release = threading.Event(), threading.Event()

    def applying() -> None:
        with sync._lock:
            held.set()
            release.wait(10)

    updater = threading.Thread(target=applying)
    updater.start()
    held.wait(5)
    try:
        counted = threading.Thread(target=lambda: (sync.record_batch(False, "x"), sync.record_batch(True)))
        counted.start()
        counted.join(2)
        assert not counted.is_alive()
        assert sync._errors == 0
    finally:
        release.set()
        updater.join(5)


class _LinkDown:
    def __init__(self) -> None:
        self.down = True

    def fetch(self, uri: str, into: Path) -> Path:
        if self.down:
            raise PortError("connection refused")
        return LocalBundleFetcher().fetch(uri, into)


def test_update_received_offline_waits_for_the_link_and_survives_a_restart(
    tmp_path: Path, bundle_dir: Path, variants: dict[str, Path], readings: list[dict[str, Any]]
) -> None:
    store = LocalModelStore(tmp_path / "models")
    write_golden(store.golden_path, golden_readings(readings))
    link = _LinkDown()
    ModelSync(store, link).seed(bundle_dir, version="1")
    outcome = ModelSync(store, link).request(update_for(variants["v2"], str(variants["v2"]), "2"))
    assert (outcome.status, outcome.serving) == ("pending", "1")
    # a restarted process finds the pending update and applies it once the link is back
    restarted = ModelSync(store, link)
    assert restarted.retry_pending() is not None and restarted.current().version == "1"
    link.down = False
    applied = restarted.retry_pending()
    assert applied is not None and applied.status == "applied" and restarted.current().version == "2"
    assert restarted.retry_pending() is None


def test_box_without_a_model_says_so(tmp_path: Path) -> None:
    sync = ModelSync(LocalModelStore(tmp_path / "models"), LocalBundleFetcher())
    with pytest.raises(BundleError, match="no model installed"):
        sync.current()


def test_update_on_a_failed_buffer_is_refused_before_the_model_is_touched(
    tmp_path: Path, sync: ModelSync, variants: dict[str, Path]
) -> None:
    # Given a box whose buffer failed (a failed fsync: the state under test)
    box = EdgeBox(buffer=EdgeBuffer(tmp_path / "edge.db"), sync=sync, box_id="b")
    box.buffer.failed = "fsync of the log failed (test)"
    # When an update comes, it is refused (model-sync answers 503) and the old model keeps serving
    with pytest.raises(PortError, match="restart the edge server"):
        box.apply_update(update_for(variants["v2"], str(variants["v2"]), "2"))
    assert sync.current().version == "1"
    assert [e for e in sync.events if e.get("version") == "2"] == []  # type: ignore[attr-defined]
    box.close()


class _Plant:
    """A plant channel that takes every alert."""

    name = "plant"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert.alert_id)

    def close(self) -> None:
        return None


def _queue_plant_alert(buffer: EdgeBuffer) -> None:
    """Queue one plant alert as a group committed without waiting for the disk does (undelivered)."""
    alert = Alert(
        alert_id="a1",
        kind="raised",
        device_id="d1",
        rule_id="model_score",
        source="learned",
        severity="warning",
        message="score above its learned threshold",
        timestamp="2024-01-01T00:01:00Z",
        started_at="2024-01-01T00:00:00Z",
        observed={"score": 2.0},
        thresholds={"warning": 1.0},
        model_version="m:1",
        rule_set_version="r1",
    )
    with buffer.transaction(durable=False):
        BufferedAlerts(buffer, local_channels=["plant"]).publish([alert])


def test_close_sends_the_plant_alerts_still_queued(tmp_path: Path, sync: ModelSync) -> None:
    plant = _Plant()
    buffer = EdgeBuffer(tmp_path / "edge.db")
    box = EdgeBox(buffer=buffer, sync=sync, box_id="b", local=LocalAlerts(buffer, [plant]))
    # Given a plant alert queued by the last group before the stop (not yet delivered; no forward
    # round runs: the box's thread is not started)
    _queue_plant_alert(buffer)
    # When the box stops, the alert goes out (once), not at the next start
    box.close()
    assert plant.sent == ["a1"]
    assert buffer.stats().local_alerts_pending == 0


def test_a_failed_buffer_stops_the_forward_loop_with_one_error_logged(
    tmp_path: Path, sync: ModelSync, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import time

    # Given a box with a plant alert queued and a buffer that failed (the state under test)
    buffer = EdgeBuffer(tmp_path / "edge.db")
    box = EdgeBox(buffer=buffer, sync=sync, box_id="b", local=LocalAlerts(buffer, [_Plant()]))
    _queue_plant_alert(buffer)
    buffer.failed = "fsync of the log failed (test)"
    # When its forward loop runs many rounds
    with caplog.at_level(logging.ERROR, logger="zaindari.edge"):
        box.start(idle_seconds=0.005)
        time.sleep(0.2)
        box.close()
    # Then it said so once, not once a round
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "restart the edge server" in errors[0].getMessage()
