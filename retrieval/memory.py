"""One allocator setting for training loops that free and reallocate large tensors each step."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Keeps glibc from handing each large tensor back to the kernel when it is freed.

    Every step allocates the (positions x catalog) logits and their gradient, hundreds of MB
    that glibc serves with ``mmap`` and unmaps on free, so the next step faults in and zeroes
    fresh pages and most of a step's time goes to the kernel. With ``mmap`` off and no
    trimming the freed blocks are reused: the same losses, in about half the time, for about
    twice the peak memory (measured in docs/results.md). Restored afterwards; a no-op without
    glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        yield
        return
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**30)
    try:
        yield
    finally:  # glibc's defaults, and the kept memory back to the kernel
        mallopt(m_mmap_max, 65536)
        mallopt(m_trim_threshold, 128 * 1024)
        libc.malloc_trim(0)
