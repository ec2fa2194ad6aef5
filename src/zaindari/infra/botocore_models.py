"""botocore sessions made for cold starts: the same models botocore reads, found and read faster.

:func:`botocore_session` is what :class:`zaindari.infra.aws.ClientFactory` builds its clients from.
Its clients and models are botocore's own (the same files, the same search path, ``AWS_DATA_PATH``
and ``~/.aws/models`` included); three things differ, all in how the files are found and read:

- a service's model is found by listing that service's folder only: botocore first lists every
  service folder it ships (~420, each stat'ed and listed: ~15 ms on the first client) to check that
  the name is one of them. A name that is not a service folder still gets botocore's own
  ``UnknownServiceError``;
- JSON models are parsed by orjson: botocore parses them (``endpoints.json``, each service's
  ``service-2`` and endpoint rule set: ~4 MB of JSON for DynamoDB and S3) with ``json.loads(...,
  object_pairs_hook=OrderedDict)``; orjson's plain dicts (ordered too) are ~25 ms faster;
- where the package holds them, models parsed ahead of time: :func:`write_parsed_models` (run by
  ``make build`` and the ``sam build`` recipes into each function's code asset) stores, with
  ``marshal``, the data files botocore reads to make the clients of :data:`PARSED_MODEL_SERVICES`,
  under a folder named after the botocore, Python and marshal versions that wrote them. A session
  reads a built-in model file from there when that folder matches its own versions (~9 ms less
  for the DynamoDB and S3 clients than reading, gunzipping and parsing the JSON), and from
  botocore's files otherwise. Only files of botocore's own data folder are ever replaced: a model
  found first on another search path is read from there, as botocore would.
"""

from __future__ import annotations

import functools
import marshal
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PARSED_MODELS_ROOT", "PARSED_MODEL_SERVICES", "botocore_session", "write_parsed_models"]

#: What the functions' cold starts make clients for (score_event: state, lake, alerts).
PARSED_MODEL_SERVICES = ("dynamodb", "s3", "sns", "events")
#: Where a code asset holds the parsed models (``make build`` writes them; never committed).
PARSED_MODELS_ROOT = Path(__file__).with_name("botocore_parsed")

_SERVICE_FOLDER = re.compile(r"[a-z0-9][a-z0-9.-]*")  # a service folder, never a path


def _versions_key() -> str:
    import botocore

    return f"botocore-{botocore.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-marshal{marshal.version}"


def botocore_session(parsed_models: Path | None = PARSED_MODELS_ROOT) -> Any:
    """A new botocore session whose data loader is made for cold starts (see the module docstring).

    Parameters
    ----------
    parsed_models
        The folder :func:`write_parsed_models` wrote to (its subfolder for this process's versions
        is used if present); ``None``: botocore's JSON files only.
    """
    import botocore.session

    from_dir = parsed_models / _versions_key() if parsed_models is not None else None
    loader_class, files_class = _loader_classes()
    session = botocore.session.get_session()
    # AWS_DATA_PATH, read as botocore.loaders.create_loader reads it
    data_path = session.get_config_variable("data_path")
    extra_paths = (
        [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
        if data_path
        else None
    )
    files = files_class(from_dir if from_dir is not None and from_dir.is_dir() else None)
    session.register_component("data_loader", loader_class(extra_search_paths=extra_paths, file_loader=files))
    return session


def write_parsed_models(
    root: Path = PARSED_MODELS_ROOT, services: Iterable[str] = PARSED_MODEL_SERVICES
) -> Path:
    """Parse, once, every botocore data file that making a client for each of ``services`` reads,
    and store it under ``root/<versions>/`` for :func:`botocore_session`; returns that folder.

    The files are found by making the clients (no endpoint is called), so the set is exactly what
    this botocore reads: endpoints, partitions, defaults, each service's model, rule set and extras.
    """
    import botocore.loaders

    session = botocore_session(parsed_models=None)
    loader = session.get_component("data_loader")
    read: dict[str, bytes] = loader.file_loader.record()
    for service in services:
        session.create_client(
            service, region_name="eu-west-1", aws_access_key_id="parse", aws_secret_access_key="parse"
        )
    out = root / _versions_key()
    builtin = botocore.loaders.Loader.BUILTIN_DATA_PATH
    for full_path, data in sorted(read.items()):
        if os.path.commonpath([full_path, builtin]) != builtin:
            continue  # a model from another search path stays where it is
        target = out / (os.path.relpath(full_path, builtin) + ".marshal")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return out


@functools.cache
def _loader_classes() -> tuple[type[Any], type[Any]]:
    """botocore's loader and file reader, subclassed as the module docstring says (built on first
    use: botocore is imported only when a client is made)."""
    import orjson
    from botocore.exceptions import DataNotFoundError
    from botocore.loaders import JSONFileLoader, Loader, instance_cache

    builtin = Loader.BUILTIN_DATA_PATH + os.sep

    class ModelFiles(JSONFileLoader):
        def __init__(self, parsed: Path | None) -> None:
            self._parsed = parsed
            self._record: dict[str, bytes] | None = None

        def record(self) -> dict[str, bytes]:
            """Keep what is read from now on, marshalled as read (botocore amends some of its data
            in place later), by full path without extension: for write_parsed_models."""
            self._record = {}
            return self._record

        def load_file(self, file_path: str) -> Any:
            if self._parsed is not None and file_path.startswith(builtin):
                try:
                    stored = (self._parsed / (file_path[len(builtin) :] + ".marshal")).read_bytes()
                except FileNotFoundError:
                    pass  # not parsed ahead of time: botocore's file
                else:
                    return marshal.loads(stored)
            data = super().load_file(file_path)
            if self._record is not None and data is not None:
                self._record[file_path] = marshal.dumps(data)
            return data

        def _load_file(self, full_path: str, open_method: Any) -> Any:  # botocore's one JSON reader
            if not os.path.isfile(full_path):
                return None
            with open_method(full_path, "rb") as fp:
                return orjson.loads(fp.read())

    class ServiceModels(Loader):
        @instance_cache
        def load_service_model(
            self, service_name: str, type_name: str, api_version: str | None = None
        ) -> Any:
            if isinstance(service_name, str) and _SERVICE_FOLDER.fullmatch(service_name):
                try:
                    version = api_version or self.determine_latest_version(service_name, type_name)
                    model = self.load_data(os.path.join(service_name, version, type_name))
                except DataNotFoundError:
                    pass  # not there: botocore's own lookup below raises its own error
                else:
                    # botocore's remaining step, as in Loader.load_service_model: merge the extras
                    botocores: Any = self  # (private members the stubs do not declare)
                    extras = botocores._find_extras(service_name, type_name, version)
                    botocores._extras_processor.process(model, extras)
                    return model
            return super().load_service_model(service_name, type_name, api_version=api_version)

    return ServiceModels, ModelFiles


def main(argv: list[str] | None = None) -> int:
    """``python -m zaindari.infra.botocore_models OUT_DIR [SERVICE ...]``: :func:`write_parsed_models`."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(
            __doc__.splitlines()[0], "\nusage: python -m zaindari.infra.botocore_models OUT_DIR [SERVICE ...]"
        )
        return 2
    out = write_parsed_models(Path(args[0]), args[1:] or PARSED_MODEL_SERVICES)
    print(f"{out}: {sum(1 for _ in out.rglob('*.marshal'))} botocore data files parsed ahead of time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
