set -e
run() { # $1 tag, $2 code dir
  (cd $2 && PYTHONPATH=$2 timeout 900 /work/main/.venv/bin/python -m rechar.cli run -m dlrm-rmc3 -m wnd -m dlrm-rmc1 -b torch,ort-cpu --batch-sizes 1,1024 --scale small --exports /tmp/ab/exp-$1 --out /tmp/ab/$1-$3 -q > /tmp/ab/$1-$3.log 2>&1)
}
run old /tmp/old106 1
run new /work/main 1
run old /tmp/old106 2
run new /work/main 2
