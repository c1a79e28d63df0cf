"""Gives freed heap memory back to the OS after heavy image decodes (glibc's `malloc_trim`).

A 4096x4096 16-bit RGBA upload needs hundreds of MB while it is decoded. glibc keeps what is
freed in its arenas for reuse (one per thread), so without a trim the process holds on to it and
its peak creeps up round after round (docs/operations.md has the numbers). `malloc_trim(0)`
returns the free pages of every arena; it is cheap next to a large decode, and only large decodes
pay it. Without glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger("app")

TRIM_AFTER_PIXELS = 1 << 20  # decodes smaller than a megapixel leave little to give back


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def give_back_freed_memory() -> bool:
    """Returns the heap's free pages to the OS; False where the C library has no such call."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
