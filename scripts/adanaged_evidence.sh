#!/usr/bin/env bash
# Issue 10's evidence runs, one after another on one thread so two lanes share a 2-core machine:
#   bash scripts/adanaged_evidence.sh baselines   # MeZO at lr 1e-5, 3e-5, 1e-4 and ZO-SGD-MMT
#   bash scripts/adanaged_evidence.sh adanaged    # AdaNAGED's defaults, the loss-scale check, its configurations
# Logs in runs/evidence/<name>.log; then `python scripts/plot_evidence.py` draws docs/adanaged-evidence.png.
set -u
lane=${1:?baselines or adanaged}
# one thread per run, and no spinning idle OpenMP/numba workers stealing the other lane's core
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} NUMBA_NUM_THREADS=${NUMBA_NUM_THREADS:-1} OMP_WAIT_POLICY=PASSIVE
py=${PYTHON:-.venv/bin/python}
base=configs/adanaged-evidence/base.yaml
mkdir -p runs/evidence
run() {  # name, then train flags
  local name=$1; shift
  [ -f runs/evidence/$name/results.json ] && { echo "skip $name (done)"; return; }
  echo "$(date -u +%T) start $name"
  $py -m zotune train --config $base --out runs/evidence/$name --overwrite --no-progress "$@" > runs/evidence/$name.log 2>&1
  echo "$(date -u +%T) end $name rc=$?"
}
case $lane in
  baselines)
    run mezo-3e-5 --optimizer mezo --lr 3e-5 --eps 1e-3
    run mezo-1e-5 --optimizer mezo --lr 1e-5 --eps 1e-3
    run mezo-1e-4 --optimizer mezo --lr 1e-4 --eps 1e-3
    run zo-sgd-mmt-3e-6 --optimizer zo-sgd-momentum --lr 3e-6 --eps 1e-3
    ;;
  adanaged)
    run adanaged --optimizer adanaged
    echo "$(date -u +%T) start loss-scale"
    $py scripts/adanaged_loss_scale.py --steps 50 --out runs/evidence/loss-scale.json > runs/evidence/loss-scale.log 2>&1
    echo "$(date -u +%T) end loss-scale rc=$?"
    # scales exact in floating point (powers of two): the scaled losses round exactly as the unscaled
    $py scripts/adanaged_loss_scale.py --steps 20 --scales 1,128,0.0078125 --out runs/evidence/loss-scale-pow2.json \
      > runs/evidence/loss-scale-pow2.log 2>&1
    # the configurations on a shorter budget (100 steps, dev at 100, test at the end)
    run adanaged-sign-100 --optimizer adanaged --steps 100 --opt sampler=dense --opt geometry=sign
    run adanaged-r8-100 --optimizer adanaged --steps 100 --opt 'sampler={name: subspace, rank: 8, refresh_every: 100}'
    # (dense spectral, --opt sampler=dense, costs ~28 s a step here: timed by `zotune bench`, not trained)
    ;;
  *) echo "unknown lane $lane"; exit 2 ;;
esac
