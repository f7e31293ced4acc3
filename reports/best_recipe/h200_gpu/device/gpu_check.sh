#!/bin/bash
# One call on the lent H200 (issue 13): the best CPU recipe trained on the GPU at 128x128 on the real shared set,
# configs/best_gpu.yaml timed at its own 512x512, and the shipped model's inference on CUDA.
# Dry run on the CPU: DRY=1 PY=.venv/bin/python ACC=cpu PREC=32-true ROOT=/tmp/dry/figshare OUT=/tmp/dry/out ...
set -u
export PYTHONUNBUFFERED=1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
LIMIT=${LIMIT:-540}            # the script's own end, inside the call's timeout
PY=${PY:-python3}
ACC=${ACC:-gpu}; PREC=${PREC:-bf16-mixed}; DEVICE=${DEVICE:-cuda}
BUDGET_128=${BUDGET_128:-00:00:04:30}
EXTRA_128=${EXTRA_128:-}; EXTRA_512=${EXTRA_512:-}
ROOT=${ROOT:-../shared/data/figshare_brain_tumor}   # the path the checkpoint records, as on the development machine
W=${WORK:-/tmp/gpuwork}
rm -rf "$W"; mkdir -p "$W" "$OUT"
if [ -z "${DRY:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
pack() {  # every small text file, in one archive (a call returns at most 8 files)
  tar czf "$OUT/text.tar.gz" -C "$W" --exclude='*.ckpt' --exclude='cache' --exclude='*.npz' . 2>/dev/null
}
echo "== environment $(date -u +%T) at $(elapsed) s"
nvidia-smi > "$W/nvidia-smi.txt" 2>&1; head -15 "$W/nvidia-smi.txt"
nproc; free -g | head -2
$PY - <<'PYEOF' 2>&1 | tee "$W/env.txt"
import cv2, jsonargparse, numpy, pytorch_lightning, scipy, segmentation_models_pytorch, torch, torchmetrics, albumentations
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())
print("lightning", pytorch_lightning.__version__, "torchmetrics", torchmetrics.__version__, "albumentations",
      albumentations.__version__, "opencv", cv2.__version__, "numpy", numpy.__version__, "scipy", scipy.__version__)
PYEOF

echo "== data $(date -u +%T) at $(elapsed) s"
if [ -e "$ROOT" ] && [ ! -e "$ROOT/.device_copy" ]; then echo "refusing to replace $ROOT (not a copy made here)"; exit 4; fi
mkdir -p "$(dirname "$ROOT")" || { ROOT=$W/figshare_brain_tumor; echo "cannot write beside the repo; data at $ROOT"; }
rm -rf "$ROOT"; cp -r .devdata/figshare128 "$ROOT"; touch "$ROOT/.device_copy"
$PY .devdata/prime_cache.py "$ROOT" "$W/cache" 2>&1 | tee "$W/prime_cache.txt"

echo "== shipped model on $DEVICE, data/sample $(date -u +%T) at $(elapsed) s"
$PY scripts/evaluate.py --ckpt lightning_bts/pretrained/best_cpu_128px.ckpt --data-root data/sample --part all \
  --device "$DEVICE" --bootstrap 0 --out "$W/eval_sample_$DEVICE" > "$W/eval_sample.log" 2>&1
echo "rc $?"; tail -5 "$W/eval_sample.log"

if command -v nvidia-smi > /dev/null; then nvidia-smi dmon -s um -d 2 -o T > "$W/dmon.txt" 2>&1 & fi

echo "== best_cpu.yaml on $ACC at 128x128, $BUDGET_128 $(date -u +%T) at $(elapsed) s"
$PY scripts/fit.py --config configs/best_cpu.yaml --trainer.accelerator "$ACC" --trainer.devices 1 \
  --trainer.precision "$PREC" --trainer.max_time "$BUDGET_128" --data.root "$ROOT" --data.cache_dir "$W/cache" \
  --data.num_workers 8 --output_dir "$W/runs" --run_name gpu128_seed42 --version h200 \
  --trainer.enable_progress_bar false $EXTRA_128 > "$W/fit128.log" 2>&1
echo "rc $?"; tail -25 "$W/fit128.log"; ls -la "$W/cache"
RUN="$W/runs/gpu128_seed42/h200"
ls "$RUN/checkpoints" > "$W/checkpoint_names.txt" 2>&1; cat "$W/checkpoint_names.txt"
for ck in "$RUN"/checkpoints/*.ckpt; do
  name=$(basename "$ck" .ckpt); [ "$name" = last ] || name=best
  $PY scripts/export.py --ckpt "$ck" --output "$OUT/gpu128_$name.ckpt" > "$W/export_$name.log" 2>&1
  echo "export $name rc $?"; tail -2 "$W/export_$name.log"
done
pack
tail -4 "$RUN/metrics.csv" | cut -c1-200

LEFT=$(( LIMIT - $(elapsed) - 50 ))
echo "== best_gpu.yaml at 512x512 (timing only), $LEFT s left $(date -u +%T) at $(elapsed) s"
if [ "$LEFT" -ge 60 ]; then
  $PY .devdata/make_512.py "$ROOT" "$W/fig512" 2>&1 | tail -1
  BUDGET_512=$(printf "00:00:%02d:%02d" $(( (LEFT - 35) / 60 )) $(( (LEFT - 35) % 60 )))
  $PY scripts/fit.py --config configs/best_gpu.yaml --trainer.accelerator "$ACC" --trainer.precision "$PREC" \
    --trainer.max_time "$BUDGET_512" --data.root "$W/fig512" --data.cache_dir "$W/cache512" \
    --output_dir "$W/runs" --run_name gpu512_timing --version h200 --trainer.enable_progress_bar false \
    --preview_slices 0 $EXTRA_512 > "$W/fit512.log" 2>&1
  echo "rc $?"; tail -12 "$W/fit512.log"
  cut -d, -f1-4 "$W/runs/gpu512_timing/h200/metrics.csv" | grep -v ",,$" | tail -12
  rm -rf "$W/fig512"
fi
kill %1 2> /dev/null
pack
echo "== done at $(elapsed) s"
ls -la "$OUT"
