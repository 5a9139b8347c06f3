"""Peak resident memory of this process over a block of code."""

from __future__ import annotations

import threading

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
