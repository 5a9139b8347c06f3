#!/usr/bin/env bash
# The GPU check of torch-cuda and ort-cuda, prepared for one run on the lent GPU machine.
#
# That machine has torch (CUDA), onnx, pandas, pyarrow, click and psutil, but onnxruntime without
# the CUDA provider and no TensorFlow: first install onnxruntime-gpu into /tmp/site by the
# four-piece recipe of shared/spec/gpu-machine.md, then, in the repository root there:
#
#     export PYTHONPATH=/tmp/site; bash benchmarks/gpu_check.sh
#
# It runs the CUDA parity and profile tests (torch-cuda, torch-compile-cuda, ort-cuda), then a
# sweep of the DLRM models and DIN/DIEN on CPU and GPU backends up to batch 16384 with fresh
# inputs (compare with the reference timings in gpu-machine.md), profiles it (and counts CPU
# events where perf is installed), then a short torch-compile-cuda sweep (CUDA graphs; its
# compiles take seconds per model and batch size), and prints the analysis.
#
# The run folder stays in /tmp/gpu-check; what comes back through $OUT is kept to a few files
# (the device tool returns at most 8, no more than 2 folders down): check.log, analysis.txt,
# tables.tgz (analyze --csv) and run.tgz (the run folder without traces).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu-check-out}"
work=/tmp/gpu-check
mkdir -p "$out" "$work"
exec > >(tee -a "$out/check.log") 2>&1

python3 -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, torch.cuda.get_device_name())"
# Test failures are reported, not fatal: the sweep below still gives the timings.
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_runners.py tests/test_profiles.py -k "cuda" 2>&1 | tail -15
counters=()  # the counting pass only where perf can count here (else --counters would stop the sweep)
python3 -c "import sys; from rechar.runners import counters as c; s = c.probe(); print('perf:', s.reason or 'ok'); sys.exit(not s.usable)" \
    && counters=(--counters)
# MODELS, BACKENDS, BATCHES override the sweep (a dry run of this script on a CPU machine:
# BACKENDS=torch,ort-cpu MODELS=ncf BATCHES=1,64 bash benchmarks/gpu_check.sh).
timeout 420 python3 -m rechar.cli run -m "${MODELS:-dlrm-rmc1,dlrm-rmc2,dlrm-rmc3,din,dien}" \
    -b "${BACKENDS:-torch,torch-cuda,ort-cpu,ort-cuda}" --batch-sizes "${BATCHES:-1,64,1024,16384}" --scale small --threads "$(nproc)" --warmup-iters 5 --min-iters 20 --min-seconds 0.5 --timeout 120 \
    --profile --profile-iters 10 "${counters[@]}" --exports "$work/exports" --out "$work/run" --quiet
echo "sweep exit status $?"
# The compiled CUDA stack on two models, as a run of its own (analysed together with the sweep).
timeout 150 python3 -m rechar.cli run -m dlrm-rmc1,din -b torch-compile-cuda --batch-sizes 64,1024 --scale small \
    --threads "$(nproc)" --warmup-iters 5 --min-iters 20 --min-seconds 0.5 --timeout 100 --profile --profile-iters 10 \
    --exports "$work/exports" --out "$work/compiled" --quiet
echo "compiled sweep exit status $?"
# Whatever the sweep finished (a timeout above leaves a resumable run), show and analyze it.
python3 -m rechar.cli show "$work/run"
python3 -m rechar.cli analyze "$work/run" $( [ -d "$work/compiled" ] && echo "$work/compiled" ) --csv "$work/tables" > "$out/analysis.txt" 2>&1
cat "$out/analysis.txt"
tar czf "$out/tables.tgz" -C "$work" tables 2>/dev/null
tar czf "$out/run.tgz" -C "$work" --exclude traces run $( [ -d "$work/compiled" ] && echo compiled )
ls -la "$out"
