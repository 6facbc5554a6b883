#!/usr/bin/env bash
# The GPU checks as one run, for a lent CUDA machine: encoder and Hamming-scan throughput against
# the same machine's CPU (bench.gpu), then two short deephash fine-tunes side by side on the one
# GPU, from the bundled weights: the current recipe at a larger batch (a), and the same with more
# photos pasted over and around the copy (b). Each run's weights and log land in OUT; which one
# (if any) ships is decided afterwards by `neardup eval` on validation sources, on the CPU.
#
#   bench/gpu_check.sh OUT DATA [MINUTES]     # DATA: a folder of image folders (one per source)
#   GPU_BENCH_ARGS=--quick bench/gpu_check.sh ...   # a smoke test of the script on any machine
set -u
OUT=${1:?OUT folder}; DATA=${2:?DATA folder}; MINUTES=${3:-5.5}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" runs
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; df -h /dev/shm; nproc
  python3 -c "import torch, torchvision, numpy; print(torch.__version__, torchvision.__version__, numpy.__version__)"
} 2>&1 | tee "$OUT/run.log"

timeout 150 python3 -m bench.gpu --out-dir "$OUT" ${GPU_BENCH_ARGS:-} 2>&1 | tee -a "$OUT/run.log"

data=(); for d in "$DATA"/*/; do data+=(--data "${d%/}"); done
common=("${data[@]}" --use-gpu --init encoders/weights/deephash-mobilenet_v3_small-128.safetensors
        --minutes "$MINUTES" --batch-size 256 --lr 0.001 --workers 7 --threads 1
        --checkpoint-every 500 --log-every 20)
train() {  # name, extra flags...: one fine-tune; if it dies early, once more in-process (no workers)
  local name=$1; shift; local t0=$SECONDS
  python3 -m encoders.train "${common[@]}" "$@" --out "runs/gpu_$name" > "runs/gpu_$name.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] && [ $((SECONDS - t0)) -lt 90 ]; then
    echo "train $name failed early (rc $rc); retrying without workers" >> "$OUT/run.log"
    tail -5 "runs/gpu_$name.log" >> "$OUT/run.log"
    rm -rf "runs/gpu_$name"
    python3 -m encoders.train "${common[@]}" "$@" --workers 0 --out "runs/gpu_$name" >> "runs/gpu_$name.log" 2>&1
    rc=$?
  fi
  echo "train $name rc $rc in $((SECONDS - t0)) s" >> "$OUT/run.log"
}
train a & train b --p-embed 0.3 --p-paste 0.3 & wait

for name in a b; do
  tail -3 "runs/gpu_$name.log" >> "$OUT/run.log"
  cp "runs/gpu_$name/log.jsonl" "$OUT/train_$name.jsonl" 2>/dev/null
  for f in "runs/gpu_$name"/deephash-*.safetensors; do
    [ -e "$f" ] && cp "$f" "$OUT/${name}_$(basename "$f")"
  done
done
ls -la "$OUT"
