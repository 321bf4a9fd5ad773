#!/usr/bin/env bash
# The engines comparison on a GPU, in under 5 minutes on one H100/H200 (run it in one call when a GPU is at hand;
# record its numbers in BENCHMARKS.md). Needs vLLM for CUDA: `pip install "trl-power[vllm]"` (the device machine of
# this project has torch and, if not vllm, the wheels carried in .whl/, see the device tool's notes).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# 1. 0.5B-shaped dummy model, MATH-like length (1024 new tokens), both engines, batch 8 and 64: plain, MH at the
#    reference's schedule scaled to the length (16 blocks, 10 steps), SMC with 16 particles, SIR with 16.
# 2. 7B-shaped dummy model, vLLM engine, batch 64: plain, SMC 16 particles, MH (16 blocks, 10 steps).
# 3. TRL's colocate weight sync into a GPU engine (vLLM's layerwise reload, docs/vllm.md "Weight sync"): the test
#    that the engine's log-probs after a sync equal the trained model's (the trainer itself stays on the CPU).
# Targets (issue): SMC <= 3x the wall time of plain sampling at the same batch; MH at the reference settings <= 10x.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-outputs/gpu_check}}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
PY=${PY:-python}
common=(--device cuda --dtype bfloat16 --max_new_tokens 1024 --mh_blocks 16 --mcmc_steps 10 --particles 16 --smc_interval 64)
timeout 170 "$PY" benchmarks/engines.py --models 0.5b --batches 8 64 "${common[@]}" \
    --out "$OUT/engines_0.5b.md" 2>&1 | tail -n 25
timeout 110 "$PY" benchmarks/engines.py --models 7b --batches 64 --engines vllm --methods temperature smc mh \
    "${common[@]}" --gpu_memory_utilization 0.85 --out "$OUT/engines_7b.md" 2>&1 | tail -n 12
timeout 240 "$PY" -m pytest -q tests/test_vllm_engine.py -k colocate 2>&1 | tail -n 5 | tee "$OUT/colocate_sync.txt" || true
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("engines_0.5b.json", "engines_7b.json"):
    path = out / name
    if not path.exists():
        print(f"{name}: missing (timed out?)")
        continue
    rows = json.loads(path.read_text())
    for batch in sorted({r["batch"] for r in rows}):
        plain = next((r["vllm"]["s_per_sample"] for r in rows if r["method"] == "temperature" and r["batch"] == batch), None)
        for r in rows:
            if r["batch"] == batch and r["method"] in ("smc", "mh") and plain:
                ratio = r["vllm"]["s_per_sample"] / plain
                target = 3.0 if r["method"] == "smc" else 10.0
                print(f"{name} batch {batch} {r['method']}: {ratio:.2f}x plain (target <= {target:g}x): "
                      + ("met" if ratio <= target else "NOT met"))
PYEOF
