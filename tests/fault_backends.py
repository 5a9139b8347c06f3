"""Backends that misbehave on purpose, for testing how a sweep survives them, one that records
which input batch every call ran on, and one that times some points beside a competing load.

Loaded into worker processes through RECHAR_EXTRA_BACKENDS (see rechar.stacks)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rechar.measure.inputs import pool_hash
from rechar.stacks.ort_backend import OrtCpuBackend
from rechar.stacks.torch_backend import TorchCompileBackend


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


class ShiftedBackend(OrtCpuBackend):
    """ONNX Runtime whose outputs come back moved by 2e-3 (20x the parity gate's logit tolerance,
    as a moved output bias would): a stack that computes another model."""

    name = "shifted"

    def outputs(self, result):
        return super().outputs(result) + 2e-3


class BurningBackend(OrtCpuBackend):
    """ONNX Runtime whose timed calls at the batch sizes in $RECHAR_TEST_BURN_BATCHES run beside a
    competing load: one busy loop per CPU in processes of their own, from the placement of the
    point's pool until the backend's next placement or close (and never longer than 20 s). Each
    batch size burns once (a marker in $RECHAR_TEST_BURN_DIR), so that a re-measurement is quiet."""

    name = "burning"
    burners: list = []

    def prepare(self, batches):
        self._stop_burning()
        call = super().prepare(batches)
        batch = len(next(iter(batches[0].values())))
        burn = {int(b) for b in os.environ["RECHAR_TEST_BURN_BATCHES"].split(",")}
        marker = Path(os.environ["RECHAR_TEST_BURN_DIR"]) / f"b{batch}"
        if batch in burn and len(batches) > 2 and not marker.exists():  # the timed pool, not the gate's two
            marker.touch()
            loop = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"
            self.burners = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count())]
            time.sleep(0.3)  # the loops are running before the timing starts
        return call

    def _stop_burning(self):
        for proc in self.burners:
            proc.kill()
            proc.wait()
        self.burners = []

    def close(self):
        self._stop_burning()
        super().close()


class FixedServiceBackend(OrtCpuBackend):
    """ONNX Runtime whose every call takes a fixed $RECHAR_TEST_SERVICE_MS milliseconds whatever
    the batch (the model's own time, then a sleep that releases the GIL): a server whose capacity
    queueing theory knows."""

    name = "fixed-service"

    def prepare(self, batches):
        inner, service = super().prepare(batches), float(os.environ["RECHAR_TEST_SERVICE_MS"]) / 1e3

        def call():
            start = time.perf_counter()
            out = inner()
            left = service - (time.perf_counter() - start)
            if left > 0:
                time.sleep(left)
            return out

        return call


def _die_at_trial():
    """With $RECHAR_TEST_DIE_AT_TRIAL set, the serving worker that imports this module (to find a
    backend above) dies of SIGKILL as its Server trial of that number starts, once (a marker file
    $RECHAR_TEST_DIE_MARKER): a crash in the middle of a search."""
    from rechar.serving import loadgen

    original = loadgen.run_test

    def run_test(executors, settings, log_dir):
        marker = Path(os.environ["RECHAR_TEST_DIE_MARKER"])
        if (settings.scenario == "server" and log_dir.name.startswith(os.environ["RECHAR_TEST_DIE_AT_TRIAL"] + "-")
                and not marker.exists()):
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(executors, settings, log_dir)

    loadgen.run_test = run_test


if os.environ.get("RECHAR_TEST_DIE_AT_TRIAL"):
    _die_at_trial()


class StallingBackend(OrtCpuBackend):
    """ONNX Runtime that stalls at batch 4 the first time it gets there: it writes the file
    $RECHAR_TEST_STALL_FLAG two seconds later, then sleeps (a test kills its node meanwhile); once the file exists,
    it runs as ONNX Runtime does."""

    name = "stalling"

    def prepare(self, batches):
        flag = Path(os.environ["RECHAR_TEST_STALL_FLAG"])
        if next(iter(batches[0].values())).shape[0] == 4 and not flag.exists():
            time.sleep(2)  # the points before this one have been streamed back (every 0.5 s)
            flag.write_text(str(os.getpid()))
            time.sleep(600)
        return super().prepare(batches)
