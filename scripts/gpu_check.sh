#!/usr/bin/env bash
# Issue 5's GPU check in one go (about 4-8 minutes on one H100): build the default 1p-frac dataset, then time
# model-only / streaming / GPU-resident pre-training throughput for ViT-Tiny (compile off and on) and ViT-Base,
# and print one Markdown table per run (train/experiments/bench.py), also kept in $OUT/bench.md and $OUT/*.json.
#
# Prepare once on the machine that calls the device tool, in the repo root (.whl/ is git-ignored; both
# wheels are pure Python, the device image lacks them):
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl webdataset==1.0.2 braceexpand==0.1.7
# Then run it through the device tool with carry [".whl"] and a timeout of 600 s:
#   bash scripts/gpu_check.sh
# Knobs (environment): STEPS (timed steps per path, 50), WARMUP (10), WORKERS (stream loader workers, 16),
# DATA (dataset folder, out/1p-frac; built when it has no build.json), SKIP_BASE=1 to leave ViT-Base out,
# EXTRA (more train.experiments.bench flags for every run, last wins; a CPU dry run:
#   PATH=.venv/bin:$PATH DATA=/tmp/tiny STEPS=1 WARMUP=0 WORKERS=1 SKIP_BASE=1 \
#   EXTRA='--img-size 32 --batch 8 --set model.kwargs={"patch_size":8,"depth":2}' bash scripts/gpu_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-out/gpu_check}
STEPS=${STEPS:-50}
WARMUP=${WARMUP:-10}
WORKERS=${WORKERS:-16}
DATA=${DATA:-out/1p-frac}
mkdir -p "$RESULTS"
: >"$RESULTS/bench.md"

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import sys, torch, timm, webdataset; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'timm', timm.__version__, 'webdataset', webdataset.__version__, 'cuda', torch.cuda.is_available())"

if [ ! -f "$DATA/build.json" ]; then
    start=$(date +%s)
    python3 -m fracgen.cli build "$DATA" --workers "$WORKERS" --no-progress --overwrite
    echo "built $DATA in $(( $(date +%s) - start )) s"
fi

# The resident op on the GPU: same output as on CPU for the same draws, no CPU-GPU sync point while batches are
# drawn (torch's sync debug mode raises on one), and where its time goes (top CUDA kernels of one batch of 256).
timeout 180 python3 - "$DATA" <<'PY' || echo "resident GPU check failed (exit $?)"
import itertools, sys, time
import torch
import torch.nn.functional as F
from train.config import AugConfig
from train.device_augment import BatchParams, DeviceAugment
from train.resident import ResidentSource, load_images

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
diff = (a - b).abs()
print(f"CPU vs {dev} on the same draws: max |diff| {diff.max():.4f}, pixels off by > 2.5 grey levels "
      f"{(diff > 0.02).float().mean():.4%} ({'OK' if (diff > 0.02).float().mean() < 0.01 else 'CHECK'})")
full = DeviceAugment(AugConfig(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5), 224, dev)
src = ResidentSource(greys, labels, int(labels.max()) + 1, full, batch_size=256)
list(itertools.islice(src.batches(0), 2))
if dev.type == "cuda":
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in itertools.islice(src.batches(1), 6):
            pass
        print("no CPU-GPU sync point while drawing batches: OK")
    except RuntimeError as e:
        print(f"SYNC POINT while drawing a batch: {e}")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in itertools.islice(src.batches(2), 20):
        pass
    torch.cuda.synchronize()
    print(f"resident draw alone: {20 * 256 / (time.perf_counter() - t):,.0f} images/s at 224 px")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        src.draw(3, 0)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
PY

bench() {  # name, then extra flags for train.experiments.bench
    local name=$1; shift
    echo "== $name" >&2
    timeout 240 python3 -m train.experiments.bench --data "$DATA" --steps "$STEPS" --warmup "$WARMUP" --workers "$WORKERS" \
        --out "$RESULTS/bench.md" --json "$RESULTS/$name.json" "$@" ${EXTRA:-} \
        || echo "| $name | failed or timed out (exit $?) |" | tee -a "$RESULTS/bench.md"
}

bench vit_tiny_eager --model vit_tiny_patch16_224 --batch 256
bench vit_tiny_compile --model vit_tiny_patch16_224 --batch 256 --compile --warmup $(( WARMUP + 10 ))
if [ "${SKIP_BASE:-0}" != 1 ]; then
    bench vit_base_eager --model vit_base_patch16_224 --batch 256
fi

echo
echo "################ all runs ################"
cat "$RESULTS/bench.md"
