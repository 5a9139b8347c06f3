"""The memory allocator a worker runs with (``--malloc``).

Eager frameworks allocate every intermediate tensor afresh on each call; glibc's malloc hands
large blocks back to the kernel on free, so the next call page-faults them in again. tcmalloc and
jemalloc are built to keep freed memory for reuse (PyTorch's CPU tuning guide recommends them;
benchmarks/allocator.py measures what each does here).
The allocator is loaded with LD_PRELOAD into the worker process only, so every framework of a run
gets the same one, and the worker checks that it really is mapped before it measures.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path

from rechar.errors import UserError

#: --malloc choice -> (library name as ctypes.util.find_library takes it, Debian package)
ALLOCATORS: dict[str, tuple[str, str]] = {
    "jemalloc": ("jemalloc", "libjemalloc2"),
    "tcmalloc": ("tcmalloc_minimal", "libtcmalloc-minimal4"),
}
CHOICES = ["default", *ALLOCATORS]


def preload(choice: str) -> str | None:
    """The LD_PRELOAD value for ``choice`` (None for glibc's default malloc); a one-line error
    if the library is not installed."""
    if choice == "default":
        return None
    if choice not in ALLOCATORS:
        raise UserError(f"unknown allocator {choice!r} (choose from {', '.join(CHOICES)})")
    library, package = ALLOCATORS[choice]
    found = ctypes.util.find_library(library)
    if found is None:
        raise UserError(f"allocator {choice} not found: install it (Debian: apt-get install {package})")
    return found


def loaded(choice: str) -> bool:
    """Whether this process runs with ``choice`` (its library is mapped, for a preloaded one)."""
    if choice == "default":
        return True
    library = ALLOCATORS[choice][0]
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return f"lib{library}.so" in maps
