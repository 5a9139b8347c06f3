#!/usr/bin/env bash
# The GPU check of torch-cuda and ort-cuda, prepared for one run on the lent GPU machine.
#
# That machine has torch (CUDA), onnx, pandas, pyarrow, click and psutil, but onnxruntime without
# the CUDA provider and no TensorFlow: first install onnxruntime-gpu into /tmp/site by the
# four-piece recipe of shared/spec/gpu-machine.md, then, in the repository root there:
#
#     export PYTHONPATH=/tmp/site; bash benchmarks/gpu_check.sh
#
# It runs the CUDA parity tests, then a sweep of the DLRM models and DIN/DIEN on CPU and GPU
# backends up to batch 16384 (compare with the reference timings in gpu-machine.md), profiles it,
# and prints the analysis. Results land in $OUT (or /tmp/gpu-check).
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
python3 -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_runners.py -k "cuda" 2>&1 | tail -5
python3 -m rechar.cli run -m dlrm-rmc1,dlrm-rmc2,dlrm-rmc3,din,dien -b torch,torch-cuda,ort-cpu,ort-cuda \
    --batch-sizes 1,64,1024,16384 --scale small --threads "$(nproc)" --min-seconds 0.5 --profile --profile-iters 10 \
    --exports /tmp/rechar-exports --out "$out/run" --quiet
python3 -m rechar.cli analyze "$out/run" --csv "$out/tables" | tee "$out/analysis.txt"
tar czf "$out/run.tgz" -C "$out" run --exclude traces
