#!/usr/bin/env bash
# Issue 12's comparison on SmolLM2-135M, SST-2, this CPU: MeZO on all weights against MeZO with LoRA
# and with prefix tuning, the same step count, each adapter at the best of a small learning-rate grid
# (chosen by the dev accuracy at the end; test reported). Two lanes of one thread each; logs and run folders in
# runs/adapters/. Usage: bash scripts/adapter_compare.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
OUT=runs/adapters
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
COMMON=(--model smollm2 --task sst2 --optimizer mezo --steps "$STEPS" --batch-size 8 --max-length 64
        --eval-every 0 --eval-examples 200 --test-examples 500 --no-progress --overwrite)
run() {  # name, extra flags...
  local name=$1; shift
  .venv/bin/zotune train "${COMMON[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 || echo "$name failed" >> "$OUT/failed.txt"
}
lane1() {
  run ft-3e-5 --lr 3e-5
  run lora-1e-4 --mode lora --lr 1e-4
  run lora-3e-4 --mode lora --lr 3e-4
  run lora-1e-3 --mode lora --lr 1e-3
  run lora-1e-2 --mode lora --lr 1e-2
  run lora-3e-2 --mode lora --lr 3e-2
}
lane2() {  # prefix tuning with MeZO's ε for prefixes (1e-1); one LoRA point with its ε (1e-2)
  run prefix-1e-4 --mode prefix --lr 1e-4 --eps 1e-1
  run prefix-1e-3 --mode prefix --lr 1e-3 --eps 1e-1
  run prefix-1e-2 --mode prefix --lr 1e-2 --eps 1e-1
  run prefix-3e-2 --mode prefix --lr 3e-2 --eps 1e-1
  run lora-1e-3-eps1e-2 --mode lora --lr 1e-3 --eps 1e-2
}
lane1 & lane2 & wait
.venv/bin/python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for r in sorted(out.glob("*/results.json")):
    x = json.loads(r.read_text())
    print(f"{r.parent.name:14s} test {x['test_accuracy']:.3f} (zero-shot {x['zero_shot_test_accuracy']:.3f}) "
          f"dev {x['best_dev_accuracy']:.3f}  train {x['train_time_s'] / x['steps']:.2f} s/step  "
          f"peak RSS {x['peak_memory_mb']:.0f} MB  "
          f"trainable {x['trainable_parameters']}")
PY
