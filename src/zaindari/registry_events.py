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
    "BundleFile",
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


class BundleFile(_Event):
    """One file of a bundle: its sha256 (from ``MANIFEST.json``) and a presigned URL to fetch it."""

    sha256: str
    url: str


class ModelUpdate(_Event):
    """The edge's instruction to fetch and run a new production bundle.

    Published on the IoT topic ``zaindari/models/<model>/update`` and on EventBridge as
    ``Zaindari Model Update``. The edge downloads ``manifest_url`` and each of ``files``, checks
    every sha256 against ``files`` (and the manifest against ``manifest_sha256``), loads the bundle
    with :func:`zaindari.bundle.load_bundle`, and acknowledges with ``Zaindari Edge Ack``.
    Presigned URLs expire at ``urls_expire_at``; after that, ``artifact_uri`` (S3) still works
    for a device with S3 credentials.
    """

    schema_version: Literal[1] = 1
    model: str
    version: int = Field(ge=1)
    alias: str = "production"
    content_hash: str
    artifact_uri: str
    manifest_url: str
    manifest_sha256: str
    files: dict[str, BundleFile]
    urls_expire_at: str
    reason: str = ""
    at: str
