"""Backends that misbehave on purpose, for testing how a sweep survives them, and one that
records which input batch every call ran on.

Loaded into worker processes through RECHAR_EXTRA_BACKENDS (see rechar.runners)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time

from rechar.runners.inputs import pool_hash

from rechar.runners.ort_backend import OrtCpuBackend
from rechar.runners.torch_backend import TorchCompileBackend


class CrashingBackend(OrtCpuBackend):
    """ONNX Runtime, but the process dies of SIGSEGV when asked to prepare batch 4."""

    name = "crashing"

    def prepare(self, batches):
        if next(iter(batches[0].values())).shape[0] == 4:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().prepare(batches)


class RaisingBackend(OrtCpuBackend):
    """A framework exception at batch 4: that point fails, the others are timed."""

    name = "raising"

    def prepare(self, batches):
        if next(iter(batches[0].values())).shape[0] == 4:
            raise RuntimeError("out of memory while allocating 1 PB\nsecond line of the message")
        return super().prepare(batches)


class HangingBackend(OrtCpuBackend):
    """Never returns from its first call."""

    name = "hanging"

    def prepare(self, batches):
        def call():
            time.sleep(3600)

        return call


class RecordingBackend(OrtCpuBackend):
    """ONNX Runtime that appends one JSON line per inference to $RECHAR_TEST_CALLS: which
    placement of the inputs it belongs to (a number per _bind, the timed and the profiling
    session's alike), whether the session is the timed one, the batch size, how many batches were
    placed, and the hash of the batch this call ran on."""

    name = "recording"
    placements = itertools.count()

    def _bind(self, session, batches):
        placement, timed_session = next(self.placements), session is self.session
        hashes = itertools.cycle([pool_hash([b]) for b in batches])
        inner = super()._bind(session, batches)
        path = os.environ["RECHAR_TEST_CALLS"]

        def call():
            with open(path, "a") as f:
                f.write(json.dumps({"placement": placement, "timed_session": timed_session,
                                    "batch": len(next(iter(batches[0].values()))), "placed": len(batches),
                                    "hash": next(hashes)}) + "\n")
            return inner()

        return call


class PerturbedCompileBackend(TorchCompileBackend):
    """torch.compile of a model whose prediction bias was moved after loading: a compiled
    artefact that computes something else than the eager model."""

    name = "perturbed-compile"

    def load(self, model, export):
        super().load(model, export)
        self.model.predict_layer.bias.add_(0.5)
