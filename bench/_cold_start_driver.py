"""Cold start of score_event in a fresh interpreter: import the handler, score one IoT event.

Usage: ``python bench/_cold_start_driver.py FUNCTION_DIR EVENT_JSON OUT_JSON``. The environment
points at the AWS endpoint and names the model. Times are ``time.perf_counter()`` readings
(CLOCK_MONOTONIC on Linux, so the parent can compare them with its own spawn time); the first
is taken before any import. Writes ``{"top", "imported", "response", "result", "aws_wait", "cpu",
"main_cpu"}`` to OUT_JSON. With ``BENCH_COLD_PROFILE=FILE`` the first invocation runs under cProfile
and its stats go to FILE.
"""

import time

TOP = time.perf_counter()

import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

AWS_WAIT = [0.0]
_getresponse = http.client.HTTPConnection.getresponse


def _timed_getresponse(self: http.client.HTTPConnection, *args: Any, **kwargs: Any) -> Any:
    started = time.perf_counter()
    try:
        return _getresponse(self, *args, **kwargs)
    finally:
        AWS_WAIT[0] += time.perf_counter() - started


http.client.HTTPConnection.getresponse = _timed_getresponse  # type: ignore[method-assign]


class _Context:
    function_name = "score_event"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:score_event"
    aws_request_id = "cold-start"
    log_group_name = "/aws/lambda/score_event"
    log_stream_name = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def main() -> None:
    function_dir, event_json, out_json = sys.argv[1:4]
    sys.path.insert(0, function_dir)  # as Lambda puts the code folder on sys.path
    print("--- cold start: init (import the handler module)", file=sys.stderr, flush=True)
    import app  # type: ignore[import-not-found]

    imported = time.perf_counter()
    print("--- cold start: first invocation", file=sys.stderr, flush=True)
    profile_to = os.environ.get("BENCH_COLD_PROFILE")  # a separate run: profiling slows it down
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    result = app.lambda_handler(json.loads(event_json), _Context())
    response = time.perf_counter()
    cpu = time.process_time()  # the process's CPU (all threads) from its start to the response
    main_cpu = time.thread_time()  # this thread's alone: the rest is other threads (OpenBLAS's...)
    if profile_to:
        profiler.disable()
        profiler.dump_stats(profile_to)
    with open(out_json, "w") as out:
        json.dump(
            {
                "top": TOP,
                "imported": imported,
                "response": response,
                "result": result,
                "aws_wait": AWS_WAIT[0],
                "cpu": cpu,
                "main_cpu": main_cpu,
            },
            out,
        )


if __name__ == "__main__":
    main()
