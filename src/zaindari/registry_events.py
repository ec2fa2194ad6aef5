"""The registry's events: what ``register_model`` and ``deploy_model`` tell the rest of the world.

Each model here is the ``detail`` of one EventBridge detail-type (and, for :class:`ModelUpdate`,
the payload of the edge's IoT topic too). Producers and consumers (the deploy function, the edge
model-sync, people's own rules) parse the same classes, so a field cannot drift between them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MODEL_PROMOTED",
    "MODEL_REFUSED",
    "MODEL_REGISTERED",
    "MODEL_ROLLED_BACK",
    "MODEL_TRAINED",
    "MODEL_UPDATE",
    "BundleRefused",
    "ModelRegistered",
    "ModelTrained",
    "ModelUpdate",
    "ProductionChanged",
]

MODEL_TRAINED = "Zaindari Model Trained"
MODEL_REGISTERED = "Zaindari Model Registered"
MODEL_PROMOTED = "Zaindari Model Promoted"
MODEL_ROLLED_BACK = "Zaindari Model Rolled Back"
MODEL_REFUSED = "Zaindari Model Refused"
MODEL_UPDATE = "Zaindari Model Update"


class _Event(BaseModel):
    # consumers ignore keys they do not know, so producers can add fields without breaking them
    model_config = ConfigDict(frozen=True, extra="ignore")


class ModelTrained(_Event):
    """A training run wrote a bundle at ``bundle_uri`` (a training job's own completion event, or
    sent by hand to register a bundle)."""

    bundle_uri: str = Field(min_length=1)
    model: str | None = None
    run_id: str = ""


class ModelRegistered(_Event):
    """A verified bundle became a new version of a model, under the ``staging`` alias."""

    model: str
    version: int = Field(ge=1)
    content_hash: str
    artifact_uri: str
    source: str
    registered_at: str
    alias: str = "staging"


class BundleRefused(_Event):
    """A bundle was not registered; ``reason`` says which file and why (also sent to SNS)."""

    source: str
    reason: str
    at: str
    model: str | None = None
    trigger: str = ""


class ProductionChanged(_Event):
    """``production`` of ``model`` now points at ``version`` (the detail of Promoted and Rolled Back).

    ``deployed`` is true when the producer already deployed that version everywhere (a rollback
    does it in the same call), so ``deploy_model`` need not do it again.
    """

    model: str
    version: int = Field(ge=1)
    previous: int | None = None
    action: Literal["promote", "rollback"]
    reason: str = ""
    actor: str = ""
    at: str
    deployed: bool = False
    numbers: dict[str, object] = Field(default_factory=dict)


class ModelUpdate(_Event):
    """The edge's instruction to fetch and run a new production bundle.

    Published on the IoT topic ``zaindari/models/<model>/update`` and on EventBridge as
    ``Zaindari Model Update``. ``sha256`` maps each file ``MANIFEST.json`` lists to its digest (the
    shape the edge's model-sync, ``zaindari.edge.model_sync``, reads); ``urls`` holds a presigned GET
    for each of those files and for ``MANIFEST.json`` (whose own digest is ``manifest_sha256``),
    valid until ``urls_expire_at``; ``artifact_uri`` (S3) serves a device with S3 credentials.
    The edge checks every digest before it loads the bundle, and acknowledges with
    ``Zaindari Edge Ack``.
    """

    schema_version: Literal[1] = 1
    model: str
    version: int = Field(ge=1)
    alias: str = "production"
    content_hash: str
    artifact_uri: str
    sha256: dict[str, str]
    manifest_sha256: str
    urls: dict[str, str]
    urls_expire_at: str
    reason: str = ""
    at: str
