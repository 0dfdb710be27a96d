#!/usr/bin/env bash
# The GPU check of kvpress-rs, for a machine with an NVIDIA GPU and its driver:
#   1. the integration tests on the CUDA device (kvpress-models: logits, kept positions and
#      answers against kvpress's golden outputs; kvpress-cli: the `kvpress` binary built with
#      the cuda feature, end to end);
#   2. `cargo xtask bench` on a Llama-3.1-8B-shaped model with random weights (no download),
#      bf16, 8k to 128k tokens, no press and presses at 0.5.
# Results go to $OUT (default target/gpu-check): test logs, bench.json/csv and the plots.
#
#   scripts/gpu-check.sh            # everything
#   QUICK=1 scripts/gpu-check.sh    # tests, then the bench at 8k and 16k only
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"

if ! command -v nvidia-smi >/dev/null; then
    echo "gpu-check: nvidia-smi not found; this script needs an NVIDIA GPU and driver" >&2
    exit 2
fi
nvidia-smi | tee "$OUT/nvidia-smi.txt"

echo "==> tests on the CUDA device"
cargo test --release -p kvpress-models --features cuda 2>&1 | tee "$OUT/tests-models.log"
cargo test --release -p kvpress-cli --features cuda 2>&1 | tee "$OUT/tests-cli.log"

echo "==> bench: Llama-3.1-8B shape, random weights, bf16"
lengths=8192,16384,32768,65536,131072
[ "${QUICK:-0}" = 1 ] && lengths=8192,16384
cargo run --release -p xtask --features cuda -- bench \
    --device cuda --dtype bf16 \
    --random-weights --config scripts/llama-3.1-8b-config.json \
    --lengths "$lengths" --reps 2 --decode-tokens 32 \
    --press knorm --press expected_attention --compression-ratio 0.5 \
    --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log"
echo "==> results in $OUT"
