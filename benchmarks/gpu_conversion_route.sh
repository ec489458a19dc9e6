#!/usr/bin/env bash
# The conversion route on a GPU, one command (sized for about 10-15 minutes on one H100/H200; not yet run on one):
# SmolLM2-135M-Instruct converted at its real training length L = 8192, LoRA at 8192 tokens (every arm the same
# budget), evaluated at 8k / 16k / 32k / 64k (1x..8x L) against the source, YaRN (oracle factor, training-free)
# and YaRN (factor 8) + the same LoRA; converted arms: the converter's default (the far-context recipe with layer 0
# a sliding window, which kept retrieval to 16x L on the toy, RESULTS §10) and --recipe portable, each + the same LoRA.
# Results: benchmarks/results/conversion_route_gpu/{summary.json,results.md,*.png}.
# The same script runs on a CPU with tiny sizes in tests/test_conversion_route.py (dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" benchmarks/conversion_route.py --source smollm2 --training-length 8192 --multiples 1,2,4,8 \
    --lora-steps "${LORA_STEPS:-60}" --lora-batch "${LORA_BATCH:-4}" --seeds "${SEEDS:-0}" \
    --out "${OUT:-benchmarks/results/conversion_route_gpu}" "$@"
