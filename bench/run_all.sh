#!/usr/bin/env bash
# Every scenario and the peers, as docs/benchmarks.md reports them (about 25 minutes).
# Run it on a quiet machine: `uptime` before and after is printed for the record, and
# every step records how much CPU other processes took meanwhile ("others_cpu_pct").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
uptime
$PY -m bench.run S0 --quiet
$PY -m bench.run S0 --target raw --levels 1000,5000 --quiet
$PY -m bench.run S1 --quiet
$PY -m bench.run S2 --quiet --profile-step 3
$PY -m bench.run S3 --quiet
$PY -m bench.run S4 --quiet --profile-step 3
$PY -m bench.run peers --repeat 3 --quiet
uptime
