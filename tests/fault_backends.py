"""Backends that misbehave on purpose, for testing how a sweep survives them.

Loaded into worker processes through RECHAR_EXTRA_BACKENDS (see rechar.runners)."""

from __future__ import annotations

import os
import signal
import time

from rechar.runners.ort_backend import OrtCpuBackend


class CrashingBackend(OrtCpuBackend):
    """ONNX Runtime, but the process dies of SIGSEGV when asked to prepare batch 4."""

    name = "crashing"

    def prepare(self, inputs):
        if next(iter(inputs.values())).shape[0] == 4:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().prepare(inputs)


class RaisingBackend(OrtCpuBackend):
    """A framework exception at batch 4: that point fails, the others are timed."""

    name = "raising"

    def prepare(self, inputs):
        if next(iter(inputs.values())).shape[0] == 4:
            raise RuntimeError("out of memory while allocating 1 PB\nsecond line of the message")
        return super().prepare(inputs)


class HangingBackend(OrtCpuBackend):
    """Never returns from its first call."""

    name = "hanging"

    def prepare(self, inputs):
        def call():
            time.sleep(3600)

        return call
