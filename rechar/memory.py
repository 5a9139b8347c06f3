"""Memory of this process: its peak resident set over a block of code, and mapped files made
resident."""

from __future__ import annotations

import ctypes
import mmap
import threading
from pathlib import Path

import psutil


class PeakRSS:
    """Samples this process's RSS in a background thread; ``peak`` is the maximum in bytes.

    ``getrusage``'s ru_maxrss is the peak over the process's whole life, so it cannot tell two
    models exported by one process apart; sampling can (at the cost of missing spikes shorter
    than the interval).
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


#: madvise(2) advice that maps every page of a range in, read-only (Linux 5.14 and later).
MADV_POPULATE_READ = 22


def prefault_mappings(folder: Path) -> int:
    """Map in every page that this process has mapped from files in ``folder``; returns the bytes.

    ONNX Runtime (and OpenVINO) memory-map a model's external weights file instead of reading
    it, so a page of an embedding table comes in from disk the first time a lookup touches it.
    A server that has been running has its tables resident; a timed window that cycles fresh
    inputs would instead time the disk, hundreds of times slower. Prefaulting after loading gives
    every stack its weights in memory, as eager PyTorch and TensorFlow hold theirs anyway."""
    folder = Path(folder).resolve()
    ranges = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and Path(parts[5]).parent == folder:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end - start))
    except OSError:
        return 0  # not Linux: nothing to do here
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, length in ranges:
        if libc.madvise(start, length, MADV_POPULATE_READ) != 0:  # older kernels: touch each page
            for page in range(start, start + length, mmap.PAGESIZE):
                ctypes.string_at(page, 1)
    return sum(length for _, length in ranges)
