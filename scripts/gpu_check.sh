#!/usr/bin/env bash
# The trainer on one GPU, end to end, from the source tree (no install): builds the default 1p-frac dataset, then
# runs the phases named in PHASES, each step adding a row to $RESULTS/summary.md as it ends (a timeout keeps what
# finished); the whole table is printed last. train/BENCH.md says how to run it through the device tool.
#
#   correct   CUDA correctness: pre-training on the resident source stopped half-way and resumed, the stream
#             source, torch.compile, one epoch of fine-tuning from the checkpoint (loss finite and falling)
#   bench     throughput (python -m train.experiments.bench): ViT-Tiny, eager and compiled
#   resident  the resident augmentation on the GPU: same output as on the CPU for the same draws, no CPU-GPU sync
#             point while drawing batches, its own images/s and top CUDA kernels
#   base      throughput of ViT-Base, eager
#   repro     repro-small at one budget (fracgen-train repro-small)
#
# Default PHASES "correct bench": about 7-8 minutes on one H100; "resident base" about 3 more; "repro" about 3-4.
# Prepare once on the machine that calls the device tool, in the repo root (.whl/ and .device/ are git-ignored;
# the device image lacks these two pure-Python wheels; the fine-tuning steps read the CIFAR-10 tarball):
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl webdataset==1.0.2 braceexpand==0.1.7
#   mkdir -p .device && cp ../shared/data/cifar10-jpeg.tar.gz .device/
# Knobs (environment): PHASES, RESULTS (default $OUT when the device tool sets it, else out/gpu_check), DATA (the
# dataset, $RESULTS/1p-frac; built when it has no build.json), CIFAR (.device/cifar10-jpeg.tar.gz), WORKERS (16),
# STEPS and WARMUP (timed and untimed bench steps, 50 and 10), EXTRA (more bench flags, last wins).
# DRY=1 runs every step at toy size on the CPU, to check the script without a GPU:
#   PATH=.venv/bin:$PATH DRY=1 PHASES='correct bench resident base repro' \
#       CIFAR=../shared/data/cifar10-jpeg-mini.tar.gz bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-${OUT:-out/gpu_check}}
PHASES=${PHASES:-correct bench}
CIFAR=${CIFAR:-.device/cifar10-jpeg.tar.gz}
WORKERS=${WORKERS:-16}
DATA=${DATA:-$RESULTS/1p-frac}
STEPS=${STEPS:-50}
WARMUP=${WARMUP:-10}
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
    TRAIN_STEPS=40 STOP=20 FT_SET=()
    BENCH=(--img-size 32 --batch 8 --steps 2 --warmup 0 --workers 1 --device cpu
        --set 'model.kwargs={"patch_size":8,"depth":2}')
    REPRO=(--cpu-check --budgets 5 --finetune-seconds 5)
    COMPILE_WARMUP=0
else  # the released recipes (bf16, batch 256 / 768) at a few hundred steps
    BUILD=()
    PT=(--config pretrain --workers "$WORKERS" --set train.log_every=20)
    FT=(--config finetune --workers "$WORKERS" --set train.log_every=10)
    TRAIN_STEPS=300 STOP=150 FT_SET=(--set optim.warmup_steps=10)  # one epoch is 65 steps: the released 660 warm-up
    BENCH=(--batch 256 --steps "$STEPS" --warmup "$WARMUP" --workers "$WORKERS")
    REPRO=(--budgets 45 --finetune-seconds 45)
    COMPILE_WARMUP=$(( WARMUP + 10 ))  # compilation happens in the first steps
fi

row() {  # step, status, seconds, figures
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

losses() {  # run folder -> "loss first -> last (finite, falling)" from its log.csv
    python3 - "$1" <<'PY'
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1] + "/log.csv")))
vals = [float(r["loss"]) for r in rows if r.get("loss") not in (None, "")]
finite = all(math.isfinite(v) for v in vals)
verdict = "finite, falling" if finite and vals[-1] < vals[0] else ("NOT FINITE" if not finite else "NOT FALLING")
top1 = [r["eval_top1"] for r in rows if r.get("eval_top1")]
print(f"loss {vals[0]:.3f} -> {vals[-1]:.3f} over {len(vals)} rows ({verdict})"
      + (f", eval top-1 {top1[-1]}" if top1 else ""))
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

has() {  # phase name: whether PHASES holds it
    [[ " $PHASES " == *" $1 "* ]]
}

if [ ! -f "$DATA/build.json" ]; then
    step build 180 python3 -m fracgen.cli build "${BUILD[@]}" --workers "$WORKERS" --no-progress --overwrite "$DATA"
fi

if has correct; then
    R=$RESULTS/runs
    step pretrain-resident-stop 150 python3 -m train pretrain "${PT[@]}" --data "$DATA" --out "$R/res" \
        --steps "$TRAIN_STEPS" --source resident --set train.ckpt_every=50 --set train.stop_at="$STOP"
    [ -f "$R/res/state.safetensors" ] && row pretrain-resident-checkpoint - - "state.safetensors at the stop: present"
    step pretrain-resident-resume 150 python3 -m train pretrain "${PT[@]}" --data "$DATA" --out "$R/res" \
        --steps "$TRAIN_STEPS" --source resident --set train.ckpt_every=50 --resume
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

bench() {  # name, model, more flags for train.experiments.bench
    local name=$1 model=$2; shift 2
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    step "bench-$name" 240 python3 -m train.experiments.bench --data "$DATA" --model "$model" "${BENCH[@]}" "$@" \
        ${EXTRA:-} --out "$RESULTS/bench.md" --json "$RESULTS/bench-$name.json" --no-progress
    [ -f "$RESULTS/bench-$name.json" ] && row "bench-$name-rates" - - "$(python3 - "$RESULTS/bench-$name.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
base = rows[0]["images_per_s"]
print(", ".join(f"{r['path'].split(' (')[0]} {r['images_per_s']:,.0f} images/s ({r['images_per_s'] / base:.0%})"
                for r in rows))
PY
)"
}

if has bench; then
    bench tiny-eager vit_tiny_patch16_224
    bench tiny-compile vit_tiny_patch16_224 --compile --warmup "$COMPILE_WARMUP"
fi

if has resident; then
    step resident-op 180 python3 - "$DATA" <<'PY'
import itertools, sys, time
import torch
import torch.nn.functional as F
from train.config import AugConfig
from train.data.device_augment import BatchParams, DeviceAugment
from train.data.resident import ResidentSource, load_images

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
greys, labels = load_images(sys.argv[1])
print(f"loaded {greys.shape} uint8 from {sys.argv[1]}")
recipe = AugConfig(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.0)
n = min(64, len(greys))
imgs = torch.from_numpy(greys[:n]).unsqueeze(1)
mip = F.avg_pool2d(imgs.float(), 2).round().to(torch.uint8)
p = DeviceAugment(recipe, 224, torch.device("cpu")).sample(torch.Generator().manual_seed(0), n, *imgs.shape[2:])
a = DeviceAugment(recipe, 224, torch.device("cpu")).apply(imgs, p, mip)
pg = BatchParams(**{k: v.to(dev) for k, v in vars(p).items()})
b = DeviceAugment(recipe, 224, dev).apply(imgs.to(dev), pg, mip.to(dev)).cpu()
off = ((a - b).abs() > 0.02).float().mean()
summary = [f"CPU vs {dev}: {'OK' if off < 0.01 else 'CHECK'} ({off:.4%} of pixels off by > 2.5 grey levels)"]
full = DeviceAugment(AugConfig(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5), 224, dev)
src = ResidentSource(greys, labels, int(labels.max()) + 1, full, batch_size=256)
list(itertools.islice(src.batches(0), 2))
if dev.type == "cuda":
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in itertools.islice(src.batches(1), 6):
            pass
        summary.append("no CPU-GPU sync point while drawing: OK")
    except RuntimeError as e:
        summary.append(f"SYNC POINT while drawing a batch: {str(e).splitlines()[0]}")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in itertools.islice(src.batches(2), 20):
        pass
    torch.cuda.synchronize()
    summary.append(f"draw alone {20 * 256 / (time.perf_counter() - t):,.0f} images/s at 224 px")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        src.draw(3, 0)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
print("; ".join(summary))
PY
fi

if has base; then
    bench base-eager vit_base_patch16_224
fi

if has repro; then
    step repro-small 420 python3 -m train repro-small "${REPRO[@]}" --dataset "$DATA" --cifar "$CIFAR" \
        --data-root "$RESULTS/data" --out "$RESULTS/repro"
fi

echo
echo "################ summary ($(date -u +%FT%TZ)) ################"
cat "$RESULTS/card.txt" "$SUMMARY"
[ -f "$RESULTS/bench.md" ] && cat "$RESULTS/bench.md"
[ -f "$RESULTS/resident-op.log" ] && cat "$RESULTS/resident-op.log"
exit 0
