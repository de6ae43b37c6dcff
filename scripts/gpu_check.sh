#!/usr/bin/env bash
# The GPU pass of issue 12, as one prepared script: gpu tests, the GPU benchmark (plain TRL vs crs
# default vs crs static rollout, 180M Qwen2, 128 x 256 tokens, interleaved rounds), and two 300-step
# default runs under a finiteness watch (the old auto = bf16, and today's auto).
#
#   bash scripts/gpu_check.sh OUT_DIR [all|tests|bench] [quick]
#
# From a source checkout on a GPU machine. If .whl/ holds wheels (a machine without a package index),
# they are installed into /tmp/site first. Everything it prints is also written to OUT_DIR (7 files).
# DEADLINE (default 570 s after the start) bounds the benchmark; with the default model prebuilt and
# carried (CRS_CACHE_DIR=.cache/gpu-models crs pretrain, before the call) `all` fits one 600 s call:
# installs ~20 s, tests and the three watched runs side by side ~220 s, the benchmark the rest.
set -u
OUT=${1:-gpu-check}
PART=${2:-all}
QUICK=${3:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CRS_CACHE_DIR=${CRS_CACHE_DIR:-$PWD/.cache/gpu-models}
PY=${PY:-python3}
if [ -z "${NO_WHL:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then   # NO_WHL=1: use the installed packages
  rm -rf /tmp/site
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  if ls .whl/antlr4*.tar.gz >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .whl/antlr4*.tar.gz || exit 1
  fi
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers, trl, accelerate, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, 'bf16', torch.cuda.is_bf16_supported())"
} 2>&1 | tee "$OUT/env.txt"

STEPS=300; [ -n "$QUICK" ] && STEPS=30
if [ "$PART" = all ] || [ "$PART" = tests ]; then
# 0. the embedded default model (cached by content hash; built once on this machine's CPU otherwise)
$PY -m crs.cli pretrain 2>&1 | tail -2
# 1. the long default runs, in the background (launch-bound tiny model: they barely load the GPU)
# (LONG_A / LONG_B / LONG_C: their crs train overrides; default: the old auto = bf16 with cuDNN attention
#  off (the crash's setting minus its kernel), today's auto, and today's auto with the static rollout
#  engine: the evidence for making static the CUDA default)
LONG_A=${LONG_A:-"trainer.precision=bf16 trainer.max_steps=$STEPS"}
LONG_B=${LONG_B:-"trainer.max_steps=$STEPS"}
LONG_C=${LONG_C:-"trainer.generation=static trainer.max_steps=$STEPS"}
timeout ${LONG_TIMEOUT:-400} $PY scripts/gpu_long_run.py $LONG_A >"$OUT/long_a.log" 2>&1 &
P1=$!
timeout ${LONG_TIMEOUT:-400} $PY scripts/gpu_long_run.py $LONG_B >"$OUT/long_b.log" 2>&1 &
P2=$!
timeout ${LONG_TIMEOUT:-400} $PY scripts/gpu_long_run.py $LONG_C >"$OUT/long_c.log" 2>&1 &
P3=$!
# 2. the gpu tests
timeout 420 $PY -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -W ignore 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
wait $P1 $P2 $P3
for x in a b c; do
  eval "ov=\$LONG_$(echo $x | tr a-z A-Z)"
  grep -h "^RESULT\|^FIRST_NONFINITE\|^NONFINITE" "$OUT/long_$x.log" | sed "s/^/[long: $ov] /"
done
fi
[ "$PART" = tests ] && exit 0
# 3. the benchmark, alone on the GPU
# (rounds are interleaved; the bench starts no round that would end past DEADLINE seconds after this
#  script started, and rewrites its JSON after every round, so a time-limited call keeps what it measured)
ROUNDS=3; [ -n "$QUICK" ] && ROUNDS=1
BUDGET=$(( ${DEADLINE:-570} - SECONDS )); [ $BUDGET -lt 60 ] && BUDGET=60
echo "bench: $ROUNDS rounds at most, budget ${BUDGET} s"
$PY -m crs.perf --device cuda --model 180m --batch 128 --tokens 256 --precision bf16 \
  --variants trl,grpo,grpo+static --rounds $ROUNDS --steps 4 --budget-s $BUDGET --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
