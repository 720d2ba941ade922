#!/usr/bin/env bash
# Runs every testbed under testbeds/ in the simulator for a range of seeds
# with a fault profile, the testbeds in parallel (one job per core), and
# fails when any seed of any testbed fails. Each failing seed's report and
# the trace that led to a broken invariant are in the testbed's log.
#
#   scripts/sim-seeds.sh [SEEDS] [PROFILE]      # default 1..201 default
#
# `make test` runs it with 200 seeds; `make sim-soak` with 10,000.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-1..201}"
profile="${2:-default}"
bin="${SPUR_SIM:-target/release/spur-sim}"
logs="${SIM_LOGS:-target/sim-seeds}"
mkdir -p "$logs"
jobs="$(nproc 2>/dev/null || echo 2)"
start=$(date +%s)
dirs=()
for d in testbeds/*/; do
  [ -f "$d/testbed.yaml" ] && dirs+=("${d%/}")
done
printf '%s\n' "${dirs[@]}" | xargs -P "$jobs" -I{} sh -c '
  name=$(basename {})
  if "$0" run {} --seeds "$1" --faults "$2" > "$3/$name.log" 2>&1; then
    tail -n 1 "$3/$name.log"
  else
    echo "FAILED: $(tail -n 1 "$3/$name.log") — see $3/$name.log"
    exit 1
  fi' "$bin" "$seeds" "$profile" "$logs" || {
  echo "sim-seeds: some seeds failed (logs in $logs)"
  exit 1
}
echo "sim-seeds: ${#dirs[@]} testbeds x seeds $seeds ($profile faults) passed in $(( $(date +%s) - start )) s"
