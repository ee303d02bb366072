#!/usr/bin/env bash
# Issue 12 on one H100: the trainer's CUDA correctness and its throughput against model-only (PHASES "correct
# bench", the default: about 7-8 minutes, one device call), then repro-small at its smallest budget
# (PHASES=repro: about 3-4 minutes, a second call if the session's device time allows; it builds the dataset
# again). Every step appends a row to $RESULTS/summary.md as it ends (a timeout keeps what finished) and the
# whole table is printed last.
#
# Prepare once on the machine that calls the device tool, in the repo root (.whl/ and .device/ are git-ignored):
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl webdataset==1.0.2 braceexpand==0.1.7
#   mkdir -p .device && cp ../shared/data/cifar10-jpeg.tar.gz .device/
# Then, through the device tool, carry [".whl", ".device"], timeout 540 s:  bash scripts/gpu_issue12.sh
# and, time allowing, timeout 300 s:  PHASES=repro bash scripts/gpu_issue12.sh
# Knobs (environment): PHASES (default "correct bench"; "correct bench repro" runs all three),
# RESULTS (default $OUT when the device tool sets it, else out/gpu_issue12), CIFAR (.device/cifar10-jpeg.tar.gz),
# WORKERS (16). DRY=1 runs every step at toy size on CPU, to check the script here:
#   PATH=.venv/bin:$PATH DRY=1 PHASES='correct bench repro' CIFAR=../shared/data/cifar10-jpeg-mini.tar.gz \
#       bash scripts/gpu_issue12.sh   (about 5 minutes on the 2-core VM)
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-${OUT:-out/gpu_issue12}}
PHASES=${PHASES:-correct bench}
CIFAR=${CIFAR:-.device/cifar10-jpeg.tar.gz}
WORKERS=${WORKERS:-16}
DATA=$RESULTS/1p-frac
mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.md
[ -f "$SUMMARY" ] || printf '| step | result | seconds | figures |\n|---|---|---:|---|\n' >"$SUMMARY"

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/numba-cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$RESULTS/card.txt"
python3 -c "import sys, torch, timm, webdataset; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'timm', timm.__version__, 'webdataset', webdataset.__version__, 'cuda', torch.cuda.is_available())" \
    | tee -a "$RESULTS/card.txt"

if [ "${DRY:-0}" = 1 ]; then  # toy scale on CPU: the tiny configs, a small build, a few steps
    BUILD=(--L 16 --size 64 --points 5000 --shard-size 8)
    PT=(--config tiny --set train.threads=0)
    FT=(--config tiny-finetune --set train.threads=0)
    STEPS=40 STOP=20 FT_SET=() BENCH=(--img-size 32 --batch 8 --steps 2 --warmup 0 --device cpu
        --set 'model.kwargs={"patch_size":8,"depth":2}')
    REPRO=(--cpu-check --budgets 5 --finetune-seconds 5)
else  # the released recipes (bf16, batch 256 / 768) at a few hundred steps
    BUILD=()
    PT=(--config pretrain --workers "$WORKERS" --set train.log_every=20)
    FT=(--config finetune --workers "$WORKERS" --set train.log_every=10)
    STEPS=300 STOP=150 FT_SET=(--set optim.warmup_steps=10)  # one epoch is 65 steps: the released 660 warm-up
    BENCH=(--model vit_tiny_patch16_224 --batch 256 --steps 50 --warmup 10 --workers "$WORKERS")
    REPRO=(--budgets 45 --finetune-seconds 45)
fi

row() {  # step, status, seconds, figures
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

losses() {  # run folder -> "loss first -> last (finite, falling)" from its log.csv
    python3 - "$1" <<'PY'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1] + "/log.csv")))
key = next(k for k in ("loss", "train_loss") if k in rows[0])
vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
finite = all(math.isfinite(v) for v in vals)
verdict = "finite, falling" if finite and vals[-1] < vals[0] else ("NOT FINITE" if not finite else "NOT FALLING")
extra = {k: rows[-1][k] for k in rows[-1] if "top1" in k or "acc" in k}
print(f"loss {vals[0]:.3f} -> {vals[-1]:.3f} over {len(vals)} rows ({verdict}) {extra or ''}")
PY
}

last_line() {  # a log's last non-blank line, short and without table pipes
    grep -v '^[[:space:]]*$' "$1" | tail -n 1 | tr '|' '/' | cut -c1-160
}

step() {  # name, timeout, command...: runs it, logs it, adds its row
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name: $*" >&2
    if timeout "$limit" "$@" >"$RESULTS/$name.log" 2>&1; then
        row "$name" ok $((SECONDS - start)) "$(last_line "$RESULTS/$name.log")"
    else
        row "$name" "FAILED (exit $?)" $((SECONDS - start)) "$(last_line "$RESULTS/$name.log")"
    fi
}

if [ ! -f "$DATA/build.json" ]; then
    step build 120 python3 -m fracgen.cli build "${BUILD[@]}" --workers "$WORKERS" --no-progress "$DATA"
fi

if [[ " $PHASES " == *" correct "* ]]; then
    R=$RESULTS/runs
    # resident source, eager: stopped half-way, then resumed (checkpoint + exact continuation)
    step pretrain-resident-stop 150 python3 -m train pretrain "${PT[@]}" --data "$DATA" --out "$R/res" \
        --steps "$STEPS" --source resident --set train.ckpt_every=50 --set train.stop_at="$STOP"
    step pretrain-resident-resume 150 python3 -m train pretrain "${PT[@]}" --data "$DATA" --out "$R/res" \
        --steps "$STEPS" --source resident --set train.ckpt_every=50 --resume
    [ -f "$R/res/log.csv" ] && row pretrain-resident-losses - - "$(losses "$R/res" 2>&1 | tail -n 1)"
    step pretrain-stream 150 python3 -m train pretrain "${PT[@]}" --data "$DATA" --out "$R/stream" \
        --steps "$STOP" --source stream
    [ -f "$R/stream/log.csv" ] && row pretrain-stream-losses - - "$(losses "$R/stream" 2>&1 | tail -n 1)"
    step pretrain-compiled 240 python3 -m train pretrain "${PT[@]}" --data "$DATA" --out "$R/compiled" \
        --steps "$STOP" --source resident --set train.compile=true
    [ -f "$R/compiled/log.csv" ] && row pretrain-compiled-losses - - "$(losses "$R/compiled" 2>&1 | tail -n 1)"
    step finetune-1-epoch 240 python3 -m train finetune "${FT[@]}" "${FT_SET[@]}" --data "$CIFAR" \
        --checkpoint "$R/res" --out "$R/ft" --epochs 1 --set data.root="$RESULTS/data"
    [ -f "$R/ft/log.csv" ] && row finetune-losses - - "$(losses "$R/ft" 2>&1 | tail -n 1)"
fi

if [[ " $PHASES " == *" bench "* ]]; then
    for mode in eager compile; do
        flag=(); [ "$mode" = compile ] && flag=(--compile)
        step "bench-$mode" 240 python3 -m train.experiments.bench --data "$DATA" "${BENCH[@]}" "${flag[@]}" \
            --out "$RESULTS/bench.md" --json "$RESULTS/bench-$mode.json" --no-progress
    done
fi

if [[ " $PHASES " == *" repro "* ]]; then
    step repro-small 420 python3 -m train repro-small "${REPRO[@]}" --dataset "$DATA" --cifar "$CIFAR" \
        --data-root "$RESULTS/data" --out "$RESULTS/repro"
fi

echo
echo "################ summary ($(date -u +%FT%TZ)) ################"
cat "$RESULTS/card.txt" "$SUMMARY"
[ -f "$RESULTS/bench.md" ] && cat "$RESULTS/bench.md"
exit 0
