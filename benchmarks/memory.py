"""Peak tensor memory of a call, the way a GPU's caching allocator counts it, on any device.

Why not the process's RSS: on CPU a fresh tensor's pages count only once written, and freed ones may
stay in the process or go back to the OS depending on glibc's history, so RSS says when pages were
touched rather than how much tensor memory was alive. `torch.cuda.max_memory_allocated` counts every
tensor at its full size from allocation to free; this does the same from the profiler's allocation
events (`profile_memory=True`), which every device reports.
"""

from __future__ import annotations

from typing import Callable

from torch.profiler import ProfilerActivity, profile


def allocation_timeline(fn: Callable[[], object]) -> tuple[list[tuple[int, int]], list]:
    """Profile `fn()`: [(time_ns, bytes of tensors it had allocated and not yet freed)] after each
    allocation or free, in time order (tensors alive before the call are not counted), and the
    profiler's other events (operators, autograd nodes), to place those moments."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = list(prof.profiler.kineto_results.events())
    # [memory] events: +nbytes at an allocation, -nbytes at a free.
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    timeline, live = [], 0
    for t, nbytes in changes:
        live += nbytes
        timeline.append((t, live))
    return timeline, [e for e in events if e.name() != "[memory]"]


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """The largest total size of tensors that `fn()` had allocated and not yet freed, at any moment
    of the call (bytes; tensors alive before the call are not counted)."""
    timeline, _ = allocation_timeline(fn)
    return max([0, *(live for _, live in timeline)])
