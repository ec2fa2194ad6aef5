"""botocore sessions made for cold starts: the same models botocore reads, found and read faster.

:func:`botocore_session` is what :class:`zaindari.infra.aws.ClientFactory` builds its clients from.
Its clients and models are botocore's own (the same files, the same search path, ``AWS_DATA_PATH``
and ``~/.aws/models`` included); two things differ, both in how the files are found and read:

- a service's model is found by listing that service's folder only: botocore first lists every
  service folder it ships (~420, each stat'ed and listed: ~15 ms on the first client) to check that
  the name is one of them. A name that is not a service folder still gets botocore's own
  ``UnknownServiceError``;
- JSON models are parsed by orjson: botocore parses them (``endpoints.json``, each service's
  ``service-2`` and endpoint rule set: ~4 MB of JSON for DynamoDB and S3) with ``json.loads(...,
  object_pairs_hook=OrderedDict)``; orjson's plain dicts (ordered too) are ~25 ms faster.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

__all__ = ["botocore_session"]

_SERVICE_FOLDER = re.compile(r"[a-z0-9][a-z0-9.-]*")  # a service folder, never a path


def botocore_session() -> Any:
    """A new botocore session whose data loader is made for cold starts (see the module docstring)."""
    import botocore.session

    loader_class, files_class = _loader_classes()
    session = botocore.session.get_session()
    # AWS_DATA_PATH, read as botocore.loaders.create_loader reads it
    data_path = session.get_config_variable("data_path")
    extra_paths = (
        [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
        if data_path
        else None
    )
    session.register_component(
        "data_loader", loader_class(extra_search_paths=extra_paths, file_loader=files_class())
    )
    return session


@functools.cache
def _loader_classes() -> tuple[type[Any], type[Any]]:
    """botocore's loader and file reader, subclassed as the module docstring says (built on first
    use: botocore is imported only when a client is made)."""
    import orjson
    from botocore.exceptions import DataNotFoundError
    from botocore.loaders import JSONFileLoader, Loader, instance_cache

    class OrjsonModelFiles(JSONFileLoader):
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

    return ServiceModels, OrjsonModelFiles
