#!/usr/bin/env bash
# bash scripts/gpu_check.sh [--dry-run]
#
# The GPU check of issue 11 (part 4), within 9 minutes on one H100/H200: the distillation speed
# table, batched local training on CUDA, `pytest -m gpu`, and one cell of each -budget experiment
# (FedDGM and DynaFed at alpha 0.01, cut to a few rounds: the per-round seconds size the full
# budget runs). Every step has its own time limit, so one slow step cannot starve the others.
#
# Needs: python >= 3.11 with torch and the packages in pyproject.toml (checked first: the
# "preflight" log names any that are missing); nothing is installed and no network is used, the
# package runs from src/ through PYTHONPATH. CIFAR-10 is read from data-cache/cifar10.tar.gz in
# the repository (git-ignored; copy of shared/data/cifar10.tar.gz) or from $CIFAR10.
#
# Writes to $OUT (default ./out/gpu_check): summary.md (the step table and every figure), one log
# per step, and experiments.tar.gz (each cell's table.md, results.csv, rounds.jsonl, plot).
# Prints the step table at the end; exits 0 only when every step is OK.
#
# --dry-run: the same steps at toy size on the CPU (built-in mini set, tiny models), for tests.
set -uo pipefail

usage() { sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; }

DRY=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg'; expected --dry-run or nothing." >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/out/gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python || command -v python3)}
cd "$REPO" || exit 2

if ((DRY)); then
    DEVICE=cpu
    DATA=builtin:cifar10-mini
else
    DEVICE=cuda
    CIFAR10=${CIFAR10:-$REPO/data-cache/cifar10.tar.gz}
    DATA=imagefolder:$CIFAR10
fi

STEPS=()
declare -A STATUS SECONDS_TAKEN FIGURE

# run_step NAME LIMIT_S CMD...: run CMD with its own time limit, output to $OUT/NAME.log
run_step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*" | tee "$OUT/$name.log"
    local start=$SECONDS rc
    # through bash -c so that a step may be one of this script's (exported) functions;
    # timeout signals the whole process group, the benchmarks' worker processes included
    timeout --kill-after=5 "$limit" bash -c '"$@"' _ "$@" >>"$OUT/$name.log" 2>&1
    rc=$?
    STEPS+=("$name")
    SECONDS_TAKEN[$name]=$((SECONDS - start))
    case $rc in
        0) STATUS[$name]=OK ;;
        124 | 137) STATUS[$name]="TIMEOUT (${limit} s)" ;;
        *) STATUS[$name]="FAIL (exit $rc)" ;;
    esac
    FIGURE[$name]=$(figure_of "$name" 2>/dev/null | head -n 1)
    echo "   ${STATUS[$name]} in ${SECONDS_TAKEN[$name]} s: ${FIGURE[$name]}"
}

# skip_step NAME REASON: record a step that could not start
skip_step() {
    STEPS+=("$1")
    STATUS[$1]="FAIL (not run)"
    SECONDS_TAKEN[$1]=0
    FIGURE[$1]=$2
    echo "$2" >"$OUT/$1.log"
    echo "== $1: not run: $2"
}

# figure_of NAME: the step's key figure, read from its log or outputs
figure_of() {
    local log=$OUT/$1.log
    case $1 in
        preflight) grep '^device:' "$log" | sed 's/^device: //' ;;
        distill_speed)
            # the batched engine in the generator's F-space, most participants per call
            awk -F'|' '$2 ~ /latent/ && $3 ~ /engine/ && $4 ~ /full/ {p = $5; r = $6}
                END {gsub(/ /, "", p); gsub(/ /, "", r);
                     if (r != "") print "F-space engine, full unroll, " p " participants: " r " participant-it/s"}' "$log" ;;
        local_training)
            awk '$1 ~ /^[0-9]+$/ && NF == 4 {p = $1; s = $4}
                END {if (s != "") print p " participants: batched " s " sequential"}' "$log" ;;
        pytest_gpu) grep -E '(passed|skipped|failed|error)' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//' ;;
        feddgm_cell | dynafed_cell) "$PY" - "$WORK/${1%_cell}" <<'EOF'
# from the round records, so that a cell stopped by its time limit still gives its figure
import statistics, sys
from pathlib import Path
from latentfl.experiment._files import read_rounds
records = [r for path in Path(sys.argv[1]).glob("runs/*/rounds.jsonl") for r in read_rounds(path)]
seconds = [r["seconds"] for r in records]
print(f"{len(records)} rounds, last {100 * records[-1]['accuracy']:.1f}%, "
      f"median {statistics.median(seconds):.1f} s/round, slowest {max(seconds):.1f} s")
EOF
        ;;
    esac
}

# experiment_cell NAME CONFIG CELL ROUNDS [--set ...]: one cell of a grid, written under $WORK
experiment_cell() {
    local name=$1 config=$2 cell=$3 rounds=$4
    shift 4
    "$PY" -m latentfl experiment --config "$config" --no-progress --only "$cell" \
        --set "output=$WORK/${name%_cell}" --set "simulation.data=$DATA" \
        --set "simulation.rounds=$rounds" --set "simulation.device=$DEVICE" "$@"
}

# --- preflight: interpreter, packages, device, data ---------------------------------------------
preflight() {
    "$PY" - "$DEVICE" <<'EOF'
import importlib, platform, sys
modules = ["torch", "torchvision", "numpy", "safetensors", "PIL", "structlog", "zmq",
           "cryptography", "opacus", "tenseal", "matplotlib", "tqdm", "pytest"]
missing = []
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as exc:  # an import can fail in other ways than ModuleNotFoundError
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
missing_text = f"missing packages: {', '.join(missing) or 'none'}"
print(f"python {platform.python_version()}, {missing_text}")
failed = []
for module in ("latentfl.cli", "latentfl.distill", "latentfl.training_batched",
               "latentfl.experiment.runner", "latentfl.experiment.report", "latentfl.simulate"):
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed.append(module)
        print(f"cannot import {module}: {type(exc).__name__}: {exc}")
import torch
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        print("device: none: torch.cuda.is_available() is False; expected a CUDA GPU "
              f"(use --dry-run to check the script on a CPU); {missing_text}")
        sys.exit(1)
    name = torch.cuda.get_device_name()
    print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}; {missing_text}")
else:
    print(f"device: cpu, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{missing_text}")
sys.exit(1 if failed else 0)
EOF
}

export PY WORK DATA DEVICE
export -f preflight experiment_cell
echo "gpu_check: $( ((DRY)) && echo "dry run on the CPU" || echo "CUDA run"), output in $OUT"
run_step preflight "$( ((DRY)) && echo 90 || echo 40)" preflight

if ((DRY)); then
    run_step distill_speed 120 "$PY" benchmarks/distill_speed.py --device cpu --quick \
        --iterations 1 --participants 1 --spaces latent
    run_step local_training 60 "$PY" benchmarks/local_training.py --device cpu \
        --participants 1 2 --steps 1 --width 8
else
    # 12 cases, each in a fresh process (CUDA start-up included); 5 timed iterations each
    run_step distill_speed 150 "$PY" benchmarks/distill_speed.py --device cuda --iterations 5
    run_step local_training 40 "$PY" benchmarks/local_training.py --device cuda \
        --participants 1 10 40 --steps 5
fi
run_step pytest_gpu 60 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests

if ((DRY)); then
    # toy sizes: 4 participants, a width-8 ConvNet, one local epoch, a few distillation steps
    toy=(--set simulation.participants=4 --set simulation.fraction=1.0
         --set "simulation.strategy.model.options={ width = 8, depth = 1 }"
         --set simulation.strategy.local.epochs=1)
    feddgm_toy=("${toy[@]}"
         --set 'architectures=[{ name = "convnet", options = { width = 8, depth = 1 } }]'
         --set simulation.strategy.feddgm.ipc=1
         --set simulation.strategy.feddgm.distill.iterations=2
         --set simulation.strategy.feddgm.distill.steps=2
         --set simulation.strategy.feddgm.global_train.epochs=1
         --set simulation.strategy.feddgm.surrogate_train.epochs=1)
    dynafed_toy=("${toy[@]}"
         --set simulation.strategy.dynafed.trajectory_length=2
         --set simulation.strategy.dynafed.ipc=1
         --set simulation.strategy.dynafed.syn_steps=2
         --set simulation.strategy.dynafed.iterations=2
         --set simulation.strategy.dynafed.finetune_steps=2)
    run_step feddgm_cell 120 experiment_cell feddgm_cell experiments/feddgm_cifar10-budget.toml \
        method=feddgm,alpha=0.1,seed=0 1 "${feddgm_toy[@]}"
    run_step dynafed_cell 120 experiment_cell dynafed_cell experiments/dynafed_cifar10-budget.toml \
        method=dynafed,alpha=0.16,seed=0 3 "${dynafed_toy[@]}"
elif [[ ! -f $CIFAR10 ]]; then
    why="CIFAR-10 not found at $CIFAR10; expected a copy of shared/data/cifar10.tar.gz there (or set CIFAR10=PATH)"
    skip_step feddgm_cell "$why"
    skip_step dynafed_cell "$why"
else
    # the budget configs' settings, cut in rounds only (DynaFed: a 10-snapshot trajectory so
    # that its synthesis round, at the config's 1,000 iterations, runs within the limit)
    run_step feddgm_cell 100 experiment_cell feddgm_cell experiments/feddgm_cifar10-budget.toml \
        method=feddgm,alpha=0.01,seed=0 2
    run_step dynafed_cell 130 experiment_cell dynafed_cell experiments/dynafed_cifar10-budget.toml \
        method=dynafed,alpha=0.01,seed=0 12 --set simulation.strategy.dynafed.trajectory_length=10
fi

# --- summary ------------------------------------------------------------------------------------
table() {
    echo "| step | status | seconds | key figure |"
    echo "| --- | --- | ---: | --- |"
    for name in "${STEPS[@]}"; do
        echo "| $name | ${STATUS[$name]} | ${SECONDS_TAKEN[$name]} | ${FIGURE[$name]} |"
    done
}
{
    echo "# GPU check $( ((DRY)) && echo "(dry run, CPU)")"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
        "command: bash scripts/gpu_check.sh $*"
    echo
    table
    echo
    echo "## preflight"
    echo
    sed '1d' "$OUT/preflight.log"
    echo
    echo "## distill_speed"
    echo
    grep -E '^(#|\|)' "$OUT/distill_speed.log" | sed 's/^# //'
    echo
    echo "## local_training (participant-steps per second)"
    echo
    echo '```'
    sed '1d' "$OUT/local_training.log"
    echo '```'
    for name in feddgm_cell dynafed_cell; do
        echo
        echo "## $name"
        echo
        # the cell's table.md, its headings one level down
        sed 's/^#/##/' "$WORK/${name%_cell}/table.md" 2>/dev/null || echo "(no table: see $name.log)"
    done
} >"$OUT/summary.md"
tar -czf "$OUT/experiments.tar.gz" -C "$WORK" --exclude=cache . 2>/dev/null

echo
table
echo
echo "wrote $OUT/summary.md, one log per step and experiments.tar.gz"
for name in "${STEPS[@]}"; do
    [[ ${STATUS[$name]} == OK ]] || exit 1
done
exit 0
