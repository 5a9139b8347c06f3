#!/usr/bin/env bash
# The GPU check: the CUDA stacks verified and timed on the lent GPU machine, in one command.
#
# That machine has torch (CUDA), onnx, pandas, pyarrow, click and psutil, but onnxruntime without
# the CUDA provider and no TensorFlow. onnxruntime-gpu (shared/spec/gpu-machine.md) travels as an
# xz-compressed tar of the installed package in four pieces (.gpuwheel/part00..03, each carried by
# one call that copies it to /tmp/parts/); this script unpacks them into /tmp/site. Then:
#
#   1. the CUDA tests (parity of every CUDA backend on every tiny model, CUDA profiles), run
#      while the eight `small` models export in parallel;
#   2. GPU sweep: all eight models on torch-cuda, ort-cuda, ort-cuda-graph (and ort-trt where
#      TensorRT's libraries exist) at batch 1-1024, fresh inputs, profiled (ort-cuda: CUPTI
#      kernels matched to its node events);
#   3. CPU sweep on the same host: torch and ort-cpu, same models and batch sizes, all cores;
#   4. torch-compile-cuda (CUDA graphs) on two models;
#   5. show and analyze (CSV tables) over all three runs (the HTML report is made back home from
#      runs.tgz: the machine has no bokeh).
#
# Each stage has its own time limit and a failed stage does not stop the next. What comes back
# through $OUT (at most 8 files): check.log, analysis.txt, tables.tgz, runs.tgz (the run folders
# without traces) and traces.tgz (three ort-cuda points' raw traces).
#
# Cost seen on an H200 (2026-11-27): unpacking 5 s, tests with the exports 75 s, then about 16 s to
# start each (model, backend) worker and 1 s per point: the full default sweep (24 GPU workers,
# 16 CPU ones) does not fit one 10-minute call. MODELS, CPU_MODELS, BATCHES, GPU_BACKENDS,
# CPU_BACKENDS and COMPILED narrow it (e.g. the models a previous run did not reach).
#
# A dry run on a CPU machine (the GPU backends are then skipped by name, not run):
#     GPU_BACKENDS=ort-cpu CPU_BACKENDS=torch MODELS=ncf BATCHES=1,64 COMPILED=none bash benchmarks/gpu_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu-check-out}"
work=/tmp/gpu-check
mkdir -p "$out" "$work"
exec > >(tee -a "$out/check.log") 2>&1
stamp() { echo "== $(date +%H:%M:%S) $*"; }

if [ -d /tmp/parts ]; then
    stamp "unpacking onnxruntime-gpu"
    mkdir -p /tmp/site && cat /tmp/parts/part0* | xz -d -T0 | tar x -C /tmp/site && rm -rf /tmp/parts
fi
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python  # the dry run here

stamp "machine"
$py --version; nvidia-smi -L 2>/dev/null; nproc
$py -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
models="${MODELS:-dlrm-rmc1,dlrm-rmc2,dlrm-rmc3,ncf,wnd,mt-wnd,din,dien}"
batches="${BATCHES:-1,16,64,256,1024}"
# The GPU stacks that can run here (a backend named but unavailable would stop the sweep).
gpu_backends=$($py - "${GPU_BACKENDS:-torch-cuda,ort-cuda,ort-cuda-graph,ort-trt}" <<'EOF'
import sys
from rechar.stacks import backend_class
ok = []
for name in sys.argv[1].split(","):
    reason = backend_class(name).unavailable_reason()
    print(f"{name}: {reason or 'available'}", file=sys.stderr)
    if not reason:
        ok.append(name)
print(",".join(ok))
EOF
)
echo "GPU backends: $gpu_backends"
timing=(--warmup-iters 5 --warmup-seconds 0.05 --min-iters 20 --min-seconds 0.1 --timeout 100 --threads "$(nproc)"
        --scale small --exports "$work/exports" --quiet)

stamp "CUDA tests, and the exports in parallel"
( timeout 150 $py -m pytest -q -p no:cacheprovider tests/test_runners.py tests/test_profiles.py -k "cuda" \
      > "$work/tests.log" 2>&1; echo "tests exit status $?" >> "$work/tests.log" ) &
tests=$!
exporting=()
for m in ${models//,/ }; do
    timeout 150 $py -m rechar.cli export -m "$m" --scale small --out "$work/exports" > "$work/export-$m.log" 2>&1 &
    exporting+=($!)
done
wait "${exporting[@]}"  # (a bare wait would also wait for the tee above)
for m in ${models//,/ }; do echo "export $m: $(tail -n 1 "$work/export-$m.log")"; done
stamp "exports done"
wait $tests
tail -25 "$work/tests.log"

if [ -n "$gpu_backends" ]; then
    stamp "GPU sweep"
    timeout -s INT -k 15 240 $py -m rechar.cli run -m "$models" -b "$gpu_backends" --batch-sizes "$batches" "${timing[@]}" \
        --profile --profile-iters 5 --out "$work/gpu"
    echo "GPU sweep exit status $?"
fi
stamp "CPU sweep, same host"
timeout -s INT -k 15 120 $py -m rechar.cli run -m "${CPU_MODELS:-$models}" -b "${CPU_BACKENDS:-torch,ort-cpu}" --batch-sizes "$batches" \
    "${timing[@]}" --out "$work/cpu"
echo "CPU sweep exit status $?"
if [ "${COMPILED:-torch-compile-cuda}" != none ]; then
    stamp "torch-compile-cuda"
    timeout -s INT -k 15 60 $py -m rechar.cli run -m dlrm-rmc1,din -b "${COMPILED:-torch-compile-cuda}" --batch-sizes 64 \
        "${timing[@]}" --profile --profile-iters 5 --out "$work/compiled"
    echo "compiled sweep exit status $?"
fi

stamp "results"
runs=$(for r in gpu cpu compiled; do [ -f "$work/$r/manifest.json" ] && echo "$work/$r"; done)
# The run folders first (the analysis can be made back home from them), then the analysis.
tar czf "$out/runs.tgz" -C "$work" --exclude traces tests.log $(for r in $runs; do basename "$r"; done)
( cd "$work/gpu/traces" 2>/dev/null && tar czf "$out/traces.tgz" $(ls -d *__ort-cuda__b64 2>/dev/null | head -8) )
for r in $runs; do $py -m rechar.cli show "$r"; done
timeout 60 $py -m rechar.cli analyze $runs --csv "$work/tables" > "$out/analysis.txt" 2>&1
head -c 20000 "$out/analysis.txt"
tar czf "$out/tables.tgz" -C "$work" tables 2>/dev/null
ls -la "$out"
stamp "done"
