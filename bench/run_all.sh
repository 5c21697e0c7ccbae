#!/usr/bin/env bash
# Every scenario and the peers, as docs/benchmarks.md reports them (about 25 minutes).
# Run it on a quiet machine: `uptime` before and after is printed for the record.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
uptime
$PY -m bench.run S0
$PY -m bench.run S0 --target raw --levels 1000,5000
$PY -m bench.run S1
$PY -m bench.run S2 --profile-step 2
$PY -m bench.run S3
$PY -m bench.run S4
$PY -m bench.run peers --repeat 3 --quiet
uptime
