"""score-file on OpenFaaS (python3-http) and `zaindari edge serve`: POST a historian file (CSV, gzip
CSV, Parquet, JSON Lines; `?name=<file name>` tells the format) -> FileScoring (the use case
score_batch's app.py runs for S3 drops) with the edge box's model -> its manifest; scores,
quarantine, manifest, drift summaries and alerts go into the box's buffer in one transaction per
file and are shipped to the lake and EventBridge under the cloud's keys (zaindari.edge.file_outbox)."""

import functools
import hashlib
import io
import logging
import threading
from typing import Any

from zaindari.edge.file_outbox import BufferedFileSink
from zaindari.edge.http import HttpEvent, guard, json_response, read_tokens
from zaindari.edge.wiring import build_edge_file_scoring, edge_settings
from zaindari.file_scoring import FileScoring, FileSource
from zaindari.ports import PortError

settings = edge_settings()  # bad configuration (or a missing token secret) fails the cold start
tokens = read_tokens(settings)
logger = logging.getLogger("zaindari.edge.score_file")
# one file at a time: the box's cores score it, and a file posted twice at once is scored once
one_file = threading.Lock()


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
    # the content's hash is its version: the same file sent twice is scored once
    source = FileSource(
        key=f"edge/{settings.edge_box_id}/{name}",
        etag=hashlib.sha256(event.body).hexdigest(),
        size=len(event.body),
    )
    scoring, sink = files()
    with one_file, sink.keeping(source, event.body):  # a file refused whole is copied to the lake
        previous = sink.read_manifest(source)
        if previous is not None and previous.status == "scored":
            return json_response(200, {"status": "duplicate", "manifest": previous.model_dump(mode="json")})
        try:
            manifest = scoring.score_file(io.BytesIO(event.body), source)
        except PortError as exc:
            logger.warning("file not scored: the box's buffer failed: %s", exc)
            return json_response(
                503, {"message": f"the box's buffer failed; retry: {exc}"}, {"Retry-After": "5"}
            )
    status = 200 if manifest.status == "scored" else 422  # failed: quarantined whole, the reason inside
    return json_response(status, {"status": manifest.status, "manifest": manifest.model_dump(mode="json")})
