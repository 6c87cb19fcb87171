#!/usr/bin/env bash
# The GPU check in one command: every GPU figure of the project in one short run (benchmarks/README.md,
# "GPU check"). Stops itself inside the budget (420 s by default) and writes OUT_DIR/gpu_check.json
# after every step, OUT_DIR/gpu_check.txt (the table) at the end, and each step's log in OUT_DIR/logs/.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--tiny] [--budget S] [--only STEP,...] OUT_DIR
#   make gpu-check OUT=DIR [GPU_CHECK_ARGS="--device cpu --tiny"]
#
# Python: $PYTHON if set, else this checkout's .venv if there is one, else python3 (the GPU machine's,
# with its own torch: nothing here installs or replaces torch). The packages that machine lacks come
# from .gpu-wheels/ (benchmarks/gpu_wheels.sh fills it beforehand, where there is a network) and go
# into a throw-away folder on PYTHONPATH for this run only.
set -u
started=$(date +%s.%N)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2

budget=420
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --budget) budget=${args[i+1]:-420} ;;
        --budget=*) budget=${args[i]#--budget=} ;;
    esac
done

if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif [ -x "$repo/.venv/bin/python" ]; then
    python=$repo/.venv/bin/python
else
    python=$(command -v python3 || command -v python)
fi
[ -n "$python" ] || { echo "gpu_check.sh: no python3 found; set PYTHON" >&2; exit 2; }

# a last guard beyond the driver's own deadline: whatever happens, the run ends near its budget
whole=${budget%.*}
case "$whole" in ''|*[!0-9]*) echo "gpu_check.sh: --budget $budget is not a number of seconds" >&2; exit 2 ;; esac
guard=$((whole + 30))
exec timeout -k 10 "$guard" "$python" "$repo/benchmarks/gpu_check.py" --started-at "$started" "$@"
