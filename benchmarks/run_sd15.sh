#!/usr/bin/env bash
# The full-size SD1.5 (random weights from its config) measurements in docs/benchmarks.md.
# Runs one thing at a time, each waiting until enough memory is free (a 64x64-latent ORT UNet
# session holds ~8 GB; the diffusers pipeline ~5 GB), logging to docs/bench/*.log.
# Usage: benchmarks/run_sd15.sh [256|levers|512|512unet ...]   (default: 256 levers 512)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/bench}
mkdir -p "$OUT"

wait_for_gb() {  # wait until MemAvailable >= $1 GiB
  while (( $(awk '/MemAvailable/ {print int($2/1048576)}' /proc/meminfo) < $1 )); do
    echo "$(date -u +%T) waiting for ${1} GiB free memory" >&2; sleep 20
  done
}

for what in "${@:-256 levers 512}"; do
  for w in $what; do
    case $w in
      256) wait_for_gb 11
           $PY -m sdrt.cli_bench --workload sd15 --size 256 --steps 4 --rounds 3 --warmup 0 \
             --json "$OUT/sd15-256.json" 2> "$OUT/sd15-256.log" ;;
      512) wait_for_gb 15
           $PY -m sdrt.cli_bench --workload sd15 --size 512 --steps 4 --rounds 2 --warmup 0 \
             --json "$OUT/sd15-512.json" 2> "$OUT/sd15-512.log" ;;
      levers) wait_for_gb 10
           $PY -m sdrt.benchmarks.levers engines/bench/sd15-random-art engines/bench/sd15-random \
             --size 256 --calls 3 --json "$OUT/sd15-256-levers.json" > "$OUT/sd15-256-levers.log" 2>&1 ;;
      512unet) wait_for_gb 10  # UNet only, one session at a time: when 512 cannot get its memory
           $PY -m sdrt.benchmarks.levers engines/bench/sd15-random-art engines/bench/sd15-random \
             --size 512 --calls 2 --only "ort defaults (sdrt)" --only "torch eager" \
             --only "ort defaults (again)" \
             --json "$OUT/sd15-512-unet.json" > "$OUT/sd15-512-unet.log" 2>&1 ;;
      *) echo "unknown run $w" >&2; exit 2 ;;
    esac
  done
done
