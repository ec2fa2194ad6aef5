"""The registry's events: what ``register_model`` and ``deploy_model`` tell the rest of the world.

Each model here is the ``detail`` of one EventBridge detail-type (and, for :class:`ModelUpdate`,
the payload of the edge's IoT topic too). Producers and consumers (the deploy function, the edge
model-sync, people's own rules) parse the same classes, so a field cannot drift between them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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
_HEX64 = r"^[0-9a-f]{64}$"


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
    """The edge's instruction to fetch and run a new production bundle: the one schema of the
    event, which ``deploy_model`` sends and the edge's model-sync (``zaindari.edge.model_sync``) reads.

    Published on the IoT topic ``zaindari/models/<model>/update`` and on EventBridge as
    ``Zaindari Model Update`` (a box also takes it by ``POST`` to its ``model-sync``). ``sha256``
    maps each file ``MANIFEST.json`` lists to its digest; ``urls`` holds a presigned GET for each of
    those files and for ``MANIFEST.json`` (whose own digest is ``manifest_sha256``), valid until
    ``urls_expire_at``; ``artifact_uri`` (S3, or a local folder) serves a device without them. The
    cloud always fills every field; an update made by hand for a box with S3 credentials (or a
    bundle on a USB stick) may leave out the URLs, their expiry and the content hash. The edge
    checks every digest before it loads the bundle, and acknowledges with ``Zaindari Edge Ack``.
    """

    schema_version: Literal[1] = 1
    model: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=1)
    alias: str = "production"
    content_hash: str | None = None
    artifact_uri: str = Field(min_length=1)
    sha256: dict[str, str] = Field(min_length=1)
    manifest_sha256: str | None = Field(default=None, pattern=_HEX64)
    urls: dict[str, str] = Field(default_factory=dict)
    urls_expire_at: str | None = None
    reason: str = ""
    at: str | None = None

    @field_validator("sha256")
    @classmethod
    def _safe_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        from zaindari.bundle import MANIFEST_FILE, REQUIRED_FILES

        for name, digest in value.items():
            if "/" in name or "\\" in name or name.startswith(".") or name == MANIFEST_FILE:
                raise ValueError(f"unsafe or unexpected file name {name!r}")
            if not re.match(_HEX64, digest):
                raise ValueError(f"{name}: sha256 must be 64 lowercase hex digits")
        missing = [f for f in REQUIRED_FILES if f not in value]
        if missing:
            raise ValueError(f"the update names no hash for required files {missing}")
        return value

    @field_validator("urls")
    @classmethod
    def _urls_cover_the_bundle(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        from zaindari.bundle import MANIFEST_FILE

        if not value:
            return value
        wanted = {*info.data.get("sha256", {}), MANIFEST_FILE}
        if set(value) != wanted:
            raise ValueError(
                f"urls must name exactly the bundle's files and {MANIFEST_FILE}: {sorted(wanted)}"
            )
        bad = [name for name, url in value.items() if not url.startswith(("https://", "http://"))]
        if bad:
            raise ValueError(f"urls of {bad} are not http(s) URLs")
        return value
