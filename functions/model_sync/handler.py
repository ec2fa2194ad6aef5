"""model-sync on OpenFaaS (python3-http) and `zaindari edge serve`: GET -> the model version the box
scores with; POST a model-update event -> 501 until zaindari.edge.model_sync (download, verify,
smoke test, swap, roll back) is wired in."""

import functools
from typing import Any

from zaindari.bundle import ModelBundle
from zaindari.edge.http import HttpEvent, guard, json_response, read_tokens
from zaindari.edge.wiring import edge_settings
from zaindari.infra.model_store import ModelSource

settings = edge_settings()  # bad configuration (or a missing token secret) fails the cold start
tokens = read_tokens(settings)
MAX_EVENT_BYTES = 64 * 1024  # a model-update event names a bundle; it never carries one


@functools.cache
def current_model() -> ModelBundle:
    if not settings.model_path:
        raise RuntimeError("ZAINDARI_MODEL_PATH is not set")
    return ModelSource(settings.model_path, settings.model_cache_dir)()


def handle(event: HttpEvent, context: Any) -> dict[str, Any]:
    refused = guard(event, tokens, MAX_EVENT_BYTES)
    if refused:
        return refused
    if event.method == "GET":
        bundle = current_model()
        return json_response(
            200,
            {
                "model": bundle.name,
                "model_version": bundle.model_version,
                "content_hash": bundle.content_hash,
            },
        )
    return json_response(
        501, {"message": "model updates are not handled yet: zaindari.edge.model_sync is not built"}
    )
