"""score-file on OpenFaaS (python3-http) and `zaindari edge serve`: POST a historian file (CSV, gzip
CSV, Parquet, JSON Lines; `?name=<file name>` tells the format) -> FileScoring (the use case
score_batch's app.py runs for S3 drops) with the edge box's model -> its manifest; scores,
quarantine and manifests go under ZAINDARI_EDGE_DATA_DIR."""

import functools
import hashlib
import io
import logging
from typing import Any

from zaindari.edge.http import HttpEvent, guard, json_response, read_tokens
from zaindari.edge.wiring import build_edge_file_scoring, edge_settings
from zaindari.file_scoring import FileScoring, FileSource
from zaindari.local_ports import LocalFileSink
from zaindari.ports import PortError

settings = edge_settings()  # bad configuration (or a missing token secret) fails the cold start
tokens = read_tokens(settings)
logger = logging.getLogger("zaindari.edge.score_file")


@functools.cache
def files() -> tuple[FileScoring, LocalFileSink]:
    """The use case and its sink, built once per container."""
    return build_edge_file_scoring(settings)


def handle(event: HttpEvent, context: Any) -> dict[str, Any]:
    refused = guard(event, tokens, settings.edge_max_file_bytes)
    if refused:
        return refused
    if event.method != "POST":
        return json_response(405, {"message": "POST a file with ?name=<file name>"}, {"Allow": "POST"})
    name = (event.query.get("name") or "").strip()
    if not name or "/" in name or name.startswith("."):
        return json_response(
            400, {"message": "?name=<file name> is required (its extension tells the format)"}
        )
    if not event.body:
        return json_response(400, {"message": "the request body (the file) is empty"})
    # the content's hash is its version: the same file sent twice is scored once
    source = FileSource(
        bucket="edge", key=f"drops/{name}", etag=hashlib.sha256(event.body).hexdigest(), size=len(event.body)
    )
    scoring, sink = files()
    previous = sink.read_manifest(source)
    if previous is not None and previous.status == "scored":
        return json_response(200, {"status": "duplicate", "manifest": previous.model_dump(mode="json")})
    try:
        manifest = scoring.score_file(io.BytesIO(event.body), source)
    except PortError as exc:
        logger.warning("file not scored: the local folder failed: %s", exc)
        return json_response(503, {"message": f"the local folder failed; retry: {exc}"}, {"Retry-After": "5"})
    status = 200 if manifest.status == "scored" else 422  # failed: quarantined whole, the reason inside
    return json_response(status, {"status": manifest.status, "manifest": manifest.model_dump(mode="json")})
