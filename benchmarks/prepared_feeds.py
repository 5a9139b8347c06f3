"""ONNX Runtime and OpenVINO: inputs wrapped inside the timed call vs prepared before it.

    python benchmarks/prepared_feeds.py [MODEL ...]

ONNX Runtime's ``session.run(names, {name: ndarray})`` wraps every numpy array in an OrtValue on
each call, and OpenVINO's ``infer({name: ndarray})`` wraps each in a Tensor; eager PyTorch and
TensorFlow are handed tensors built before timing. This times, side by side in one process on the
same input pool at batch 1 and 64 (one thread, fresh inputs, 5 alternating rounds, medians of
each round's p50), the wrapped call against the prepared one (OrtValues bound once in an IO
binding per batch; ov.Tensor objects made once), which is what the backends now time. (ORT's
``run_with_ort_values`` with prepared OrtValues was tried too: ~3x slower than either at batch 1.)
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import onnxruntime as ort

import rechar.models as models
from rechar.exporters import export
from rechar.measure.inputs import FALLBACK_CACHE_BYTES, PoolSpec
from rechar.measure.timing import TimingOptions, time_call

TIMING = TimingOptions(warmup_iters=200, warmup_seconds=0.2, min_iters=2000, min_seconds=0.5)


def _p50(call) -> float:
    return float(np.percentile(time_call(call, TIMING), 50)) / 1e3


def main(names: list[str]) -> None:
    print("model      batch  ORT wrapped  ORT prepared  ratio   OV wrapped  OV prepared  ratio   (p50 us)")
    for name in names:
        result = export(name, "tiny", out="exports")
        model = models.get(name, scale="tiny")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(result.onnx_path), options, providers=["CPUExecutionProvider"])
        outputs = [o.name for o in session.get_outputs()]
        try:
            import openvino as ov

            core = ov.Core()
            compiled = {}
        except ImportError:
            ov = None
        for batch in (1, 64):
            pool = PoolSpec(0, "uniform", 1.05, "fresh", FALLBACK_CACHE_BYTES).make(model, batch).batches
            wrapped = itertools.cycle(pool)
            bindings = []
            for b in pool:
                binding = session.io_binding()
                for k, v in b.items():
                    binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v))
                for n in outputs:
                    binding.bind_output(n, "cpu")
                bindings.append(binding)
            prepared = itertools.cycle(bindings)
            ort_calls = (lambda: session.run(outputs, next(wrapped)),
                         lambda: session.run_with_iobinding(next(prepared)))
            ov_calls = ()
            if ov is not None:
                graph = core.read_model(str(result.onnx_path))
                graph.reshape({i.get_any_name(): [batch, *list(i.get_partial_shape())[1:]] for i in graph.inputs})
                request = core.compile_model(graph, "CPU", {"INFERENCE_NUM_THREADS": 1}).create_infer_request()
                ov_wrapped = itertools.cycle(pool)
                ov_prepared = itertools.cycle([{k: ov.Tensor(v, shared_memory=True) for k, v in b.items()} for b in pool])
                ov_calls = (lambda: request.infer(next(ov_wrapped), share_inputs=True, share_outputs=True),
                            lambda: request.infer(next(ov_prepared), share_inputs=True, share_outputs=True))
            rounds = {k: [] for k in range(4)}
            for _ in range(5):
                for k, call in enumerate((*ort_calls, *ov_calls)):
                    rounds[k].append(_p50(call))
            med = {k: float(np.median(v)) if v else float("nan") for k, v in rounds.items()}
            print(f"{name:10s} {batch:5d}  {med[0]:11.2f}  {med[1]:12.2f}  {med[0] / med[1]:5.2f}   "
                  f"{med[2]:10.2f}  {med[3]:11.2f}  {med[2] / med[3]:5.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["ncf", "dlrm-rmc1", "din"])
