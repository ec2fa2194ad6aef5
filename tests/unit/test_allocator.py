"""The malloc settings a warm function process runs with (zaindari.infra.allocator)."""

from __future__ import annotations

import platform
import resource

from zaindari.infra.allocator import retain_freed_heap


def _faults_of_a_batch_worth_of_small_allocations() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [bytes(2048) for _ in range(4000)]  # ~8 MiB in pieces, like a batch's JSON lines
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_heap_is_kept_mapped_for_the_next_invocation() -> None:
    # Given glibc (Lambda's Amazon Linux, the python3-http-debian image, CI), the setting applies;
    # elsewhere (macOS, musl) it changes nothing and says so
    if platform.libc_ver()[0] != "glibc":
        assert retain_freed_heap() is False
        return
    assert retain_freed_heap() is True

    # When one "batch" has run, the next one reuses its pages instead of faulting them in again
    _faults_of_a_batch_worth_of_small_allocations()
    assert _faults_of_a_batch_worth_of_small_allocations() < 200  # ~2,000 without the setting
