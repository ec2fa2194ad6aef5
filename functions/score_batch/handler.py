"""score-file on OpenFaaS (python3-http) and `zaindari edge serve`: POST a historian file (CSV, gzip
CSV, Parquet, JSON Lines; `?name=<file name>` tells the format) -> FileScoring (the use case
score_batch's app.py runs for S3 drops) with the edge box's model -> its manifest; scores,
quarantine, manifest, drift summaries and alerts go into the box's buffer in one transaction per
file and are shipped to the lake and EventBridge under the cloud's keys (zaindari.edge.file_outbox)."""

import functools
import logging
from typing import Any

from zaindari.edge.file_outbox import BufferedFileSink, posted_source
from zaindari.edge.http import HttpEvent, guard, json_response, read_tokens
from zaindari.edge.wiring import build_edge_file_scoring, edge_settings
from zaindari.file_scoring import FileScoring
from zaindari.ports import PortError

settings = edge_settings()  # bad configuration (or a missing token secret) fails the cold start
tokens = read_tokens(settings)
logger = logging.getLogger("zaindari.edge.score_file")


@functools.cache
def files() -> tuple[FileScoring, BufferedFileSink]:
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
    scoring, sink = files()
    try:  # one file at a time; a file already scored is a duplicate
        manifest, duplicate = sink.score_posted(
            scoring, posted_source(settings.edge_box_id, name, event.body), event.body
        )
    except PortError as exc:
        logger.warning("file not scored: the box's buffer failed: %s", exc)
        return json_response(503, {"message": f"the box's buffer failed; retry: {exc}"}, {"Retry-After": "5"})
    if duplicate:
        return json_response(200, {"status": "duplicate", "manifest": manifest.model_dump(mode="json")})
    status = 200 if manifest.status == "scored" else 422  # failed: quarantined whole, the reason inside
    return json_response(status, {"status": manifest.status, "manifest": manifest.model_dump(mode="json")})
