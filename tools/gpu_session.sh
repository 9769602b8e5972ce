#!/usr/bin/env bash
# The whole check for a lent GPU machine (../shared/GPU.md, step 3 onwards), run from the project
# root after .gpu1's part was copied to /tmp/parts. Everything it measures lands in $OUT.
# .gpu2/extra/ may hold more wheels (mlx-vlm and what it imports that the machine lacks).
#   CHECK_ARGS   arguments of tools/gpu_check.py (default: --tokens 128)
#   BENCH_ARGS   arguments of the first tools/bench_estimate.py run (default: --only /bf16/)
#   BENCH2_ARGS  a second bench run, if set; *_S are the time limits in seconds
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
cat /tmp/parts/part.aa .gpu2/part.ab > "/tmp/$(cat .gpu2/WHEEL_NAME)"
shopt -s nullglob
python3 -m pip install -q --no-index --no-deps --target /tmp/site "/tmp/$(cat .gpu2/WHEEL_NAME)" \
  .gpu2/mlx-*.whl .gpu2/mlx_lm-*.whl .gpu2/extra/*.whl 2>&1 | grep -v "already exists" | tail -3
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -V
  python3 -m pip list 2>/dev/null | grep -iE "torch|transformers|pillow|numpy|mlx"; } > "$OUT/env.txt" 2>&1
timeout "${CHECK_S:-150}" python3 tools/gpu_check.py --out "$OUT" ${CHECK_ARGS:---tokens 128} \
  > "$OUT/gpu_check.txt" 2>&1
echo "gpu_check rc=$?"
timeout "${BENCH_S:-240}" python3 tools/bench_estimate.py ${BENCH_ARGS:---only /bf16/} \
  --json "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2>&1
echo "bench rc=$?"
if [ -n "${BENCH2_ARGS:-}" ]; then
  timeout "${BENCH2_S:-120}" python3 tools/bench_estimate.py $BENCH2_ARGS \
    --json "$OUT/bench_gpu2.json" > "$OUT/bench_gpu2.md" 2>&1
  echo "bench2 rc=$?"
fi
cat "$OUT/env.txt"; tail -25 "$OUT/gpu_check.txt"; grep "^  " "$OUT"/bench_gpu*.md
