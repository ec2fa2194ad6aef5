"""schemathesis against the edge server's OpenAPI document (``GET /openapi.json``, built by
``zaindari.edge.openapi``), over real HTTP: ``zaindari edge serve`` in its own process, with a
bearer token, its box offline (no uplink).

For every operation: no 5xx, and every status code, content type, header and body is one the
document gives. Not checked: that schema-valid data is accepted (the contract has rules JSON
Schema cannot state: finite numbers, a timestamp window around the box's clock), as for the
Lambda HTTP handler (``test_http_schema.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.edge_support import edge_serve_env, free_port
from tests.support import http_call, start_server, stop_server, zaindari_cli

TOKEN = "edge-schema-token"


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator[str]:
    root = tmp_path_factory.mktemp("edge-openapi")
    port = free_port()
    env = {
        **edge_serve_env(root, bundle_dir, TOKEN),
        "ZAINDARI_MAX_PAYLOAD_BYTES": "65536",
        "ZAINDARI_EDGE_MAX_FILE_BYTES": "262144",
    }
    url = f"http://127.0.0.1:{port}"
    process = start_server(
        [*zaindari_cli(), "edge", "serve", "--port", str(port), "--threads", "2"], env, f"{url}/healthz"
    )
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def edge_schema(edge_url: str) -> Any:
    status, headers, data = http_call(f"{edge_url}/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    return schemathesis.openapi.from_dict(json.loads(data))


def test_the_edge_server_publishes_every_route_with_bearer_auth_and_the_shared_schemas(
    edge_schema: Any,
) -> None:
    operations = {f"{r.ok().method.upper()} {r.ok().path}" for r in edge_schema.get_all_operations()}
    assert operations == {
        "GET /function/score-event",
        "POST /function/score-event",
        "POST /function/score-file",
        "GET /function/model-sync",
        "POST /function/model-sync",
        "GET /healthz",
        "GET /openapi.json",
    }
    raw = edge_schema.raw_schema
    assert raw["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    # the contract's and the model update's own models, not a copy
    assert {"Reading", "ReadingBatch", "ModelUpdate"} <= set(raw["components"]["schemas"])


def test_the_edge_server_honours_its_openapi_schema(edge_schema: Any, edge_url: str) -> None:
    """(Driven through hypothesis directly: schemathesis' pytest plugin does not run on pytest 9.)"""
    for result in edge_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        def conforms(case: Any) -> None:
            case.call_and_validate(
                base_url=edge_url,
                headers={"Authorization": f"Bearer {TOKEN}"},
                excluded_checks=[positive_data_acceptance],
            )

        conforms()


def test_requests_without_the_token_get_the_documented_401(edge_url: str) -> None:
    for path, method in (("score-event", "POST"), ("score-file", "POST"), ("model-sync", "GET")):
        status, headers, data = http_call(f"{edge_url}/function/{path}", method=method, body=b"{}")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert json.loads(data) == {"message": "missing or invalid bearer token"}
