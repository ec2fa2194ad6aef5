"""The edge server (``zaindari edge serve``, its own process, real HTTP) fed hostile telemetry and
hostile files (hypothesis, ``tests/hostile.py``): always an answer the caller can act on (scored,
rejected with its reasons, or retry), never a 5xx, never a dead server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.contract.test_edge_http import EdgeServer, edge
from tests.hostile import hostile_bodies
from tests.support import http_call, plant_readings

__all__ = ["edge"]  # fixtures, used by name


@pytest.fixture(scope="module")
def bases() -> list[dict[str, Any]]:
    return plant_readings()[800:840]


@given(data=st.data())
def test_hostile_score_event_bodies_get_a_json_answer_never_a_5xx(
    edge: EdgeServer, bases: list[dict[str, Any]], data: st.DataObject
) -> None:
    (body,) = data.draw(hostile_bodies(bases, max_size=1))
    status, _, raw = edge.call("score-event", body.encode("utf-8", "surrogatepass"))
    assert status in (200, 400, 413, 503), raw[:300]
    answer = json.loads(raw)
    if status != 200:
        assert answer["message"]
    if status == 400:
        assert answer["errors"]


@given(
    raw=st.one_of(
        st.binary(max_size=2048), st.text(max_size=2048).map(lambda t: t.encode("utf-8", "surrogatepass"))
    ),
    name=st.sampled_from(["x.csv", "x.jsonl", "x.parquet", "x.csv.gz", "x.txt", "../../etc/passwd.csv", "x"]),
)
def test_hostile_files_get_an_answer_never_a_5xx_and_the_server_stays_up(
    edge: EdgeServer, raw: bytes, name: str
) -> None:
    status, _, body = edge.call("score-file", raw, suffix=f"?name={name}")
    assert status < 500, body[:300]
    assert json.loads(body)
    assert http_call(f"{edge.url}/healthz")[0] == 200


def test_nothing_the_fuzzing_sent_escaped_the_data_folder(edge: EdgeServer) -> None:
    """A file named ``../../etc/passwd.csv`` is scored (or refused) as a name, never as a path: the
    box's folder still holds only its data and its secrets, and the data only what the box writes."""
    status, _, _ = edge.call("score-file", b"a,b\n1,2\n", suffix="?name=../../escape.csv")
    assert status < 500
    root = edge.data_dir.parent
    assert {p.name for p in root.iterdir()} <= {"data", "secrets"}
    assert not list(root.parent.glob("escape*")) and not list(root.glob("escape*"))
    assert all(".." not in p.relative_to(edge.data_dir).parts for p in edge.data_dir.rglob("*"))
