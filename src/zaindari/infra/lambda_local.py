"""Running a Lambda handler on this machine: import it as Lambda does, and give it a context object.

Used by ``zaindari invoke``, the tests and the benchmarks (one implementation for all three).
"""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType

__all__ = ["LocalLambdaContext", "import_function"]


class LocalLambdaContext:
    """The Lambda context object: the attributes handlers and Powertools read."""

    def __init__(
        self,
        function_name: str,
        *,
        memory_mb: int = 1024,
        timeout_s: float = 60.0,
        region: str = "eu-west-1",
        account_id: str = "123456789012",
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def import_function(app_path: Path, folder: str, *, fresh: bool = False) -> ModuleType:
    """Import ``functions/<folder>/app.py`` as Lambda would: by file, with its folder on the path.

    ``fresh`` gives the module a unique name, so each call runs its import-time code again (a new
    container).
    """
    module_name = f"zaindari_function_{folder}" + (f"_{uuid.uuid4().hex[:8]}" if fresh else "")
    spec = importlib.util.spec_from_file_location(module_name, app_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{app_path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before exec: pydantic resolves the module's annotations by name
    if str(app_path.parent) not in sys.path:
        sys.path.insert(0, str(app_path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
