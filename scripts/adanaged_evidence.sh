#!/usr/bin/env bash
# Issue 10's evidence runs, one after another on one thread (OMP_NUM_THREADS=1) so two lanes can share
# a 2-core machine: `bash scripts/adanaged_evidence.sh baselines` (MeZO grid, ZO-SGD-MMT) and
# `bash scripts/adanaged_evidence.sh adanaged` (AdaNAGED's defaults and its configurations).
# Logs in runs/evidence/<name>.log; the plot: `python scripts/plot_evidence.py`.
set -u
lane=${1:?baselines or adanaged}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
zotune=${ZOTUNE:-.venv/bin/zotune}
base=configs/adanaged-evidence/base.yaml
mkdir -p runs/evidence
run() {  # name, then train flags
  local name=$1; shift
  [ -f runs/evidence/$name/results.json ] && { echo "skip $name (done)"; return; }
  echo "$(date -u +%T) start $name"
  $zotune train --config $base --out runs/evidence/$name --overwrite --no-progress "$@" > runs/evidence/$name.log 2>&1
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
    ;;
  *) echo "unknown lane $lane"; exit 2 ;;
esac
