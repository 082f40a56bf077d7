#!/usr/bin/env bash
# The GPU benchmarks in one go, for a bare GPU machine (docs/benchmarks.md, "GPU").
#
# Run from the repository root (not pip-installed; the repo goes on PYTHONPATH). Needs
# python3 with torch (CUDA), transformers, safetensors, pyyaml, tqdm, numpy; soundfile and
# soxr come from an extra site dir when the machine lacks them:
#
#     PYTHONPATH=/tmp/site OUT=/some/dir bash benchmarks/gpu.sh
#
# Writes 7 files to $OUT (default runs/benchmarks/gpu) in at most 4 minutes:
#   env.txt             GPU, driver, versions, the commands run and their exit codes
#   encoder.json/.log   (a) 4 x 10 s and 64 x 10 s, (b) a 512-clip stream; bf16 and fp32,
#                       speechssl vs transformers, real-time factors, output agreement
#   pretrain_step.json/.log  one pretraining step, BASE and small, bf16 autocast
#   compile.json/.log   torch.compile of speechssl's encoder: compile time and speed
# Every step has its own time limit, so one that fails or hangs leaves the others' results.
set -u
OUT="${OUT:-runs/benchmarks/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
# SMOKE=1 DEVICE=cpu: the same steps at toy sizes, to check the script anywhere.
if [ "${SMOKE:-0}" = 1 ]; then
  FIXED=2,3 SECONDS_=2 STREAM=6 STEP_BATCH=2 STEP_SECONDS=2 REPEATS=1 SLOW=10  # time limits x10
else
  FIXED=4,64 SECONDS_=10 STREAM=512 STEP_BATCH=16 STEP_SECONDS=4 REPEATS=5 SLOW=1
fi
start=$(date +%s)

step() {  # step SECONDS LOGFILE command...
  local limit=$(( $1 * SLOW )) log=$2
  shift 2
  echo "\$ $*" >> "$OUT/env.txt"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  echo "  -> exit $rc after $(( $(date +%s) - start )) s in total" >> "$OUT/env.txt"
  tail -n 25 "$OUT/$log"
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
  echo "PYTHONPATH=$PYTHONPATH"
} > "$OUT/env.txt"
cat "$OUT/env.txt"

# (a) 4 x 10 s (the batch) and 64 x 10 s in one batch; (b) a 512-clip stream of
# 1-20 s (peers: arrival order, batches of 8). bf16 autocast and fp32, real-time factors.
step 120 encoder.log "$PY" benchmarks/encoder.py --device "$DEVICE" --no-torchaudio --no-int8 \
  --fixed-batch "$FIXED" --fixed-seconds "$SECONDS_" --repeats $(( REPEATS + 2 )) --stream "$STREAM" \
  --stream-repeats $(( REPEATS > 3 ? 3 : REPEATS )) --max-batch-seconds 600 --out "$OUT/encoder.json"

# One pretraining step (forward, backward, AdamW), bf16 autocast, same batch for both.
step 50 pretrain_step.log "$PY" benchmarks/pretrain_step.py --device "$DEVICE" --bf16 --presets base,small \
  --batch "$STEP_BATCH" --seconds "$STEP_SECONDS" --repeats "$REPEATS" --out "$OUT/pretrain_step.json"

# torch.compile of speechssl's encoder (fixed shapes), last: it may not finish in what is left.
left=$(( (235 * SLOW - ($(date +%s) - start)) / SLOW ))
if [ "$left" -gt 30 ]; then
  step "$left" compile.log "$PY" benchmarks/encoder.py --device "$DEVICE" --no-torchaudio --no-int8 --compile \
    --fixed-batch "${FIXED##*,}" --fixed-seconds "$SECONDS_" --repeats "$REPEATS" --stream 0 --out "$OUT/compile.json"
fi

echo "done in $(( $(date +%s) - start )) s; files in $OUT:" | tee -a "$OUT/env.txt"
ls -la "$OUT"
