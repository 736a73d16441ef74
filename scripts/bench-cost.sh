#!/usr/bin/env bash
# Cost per unit of work, sessionhub beside its peers (docs/benchmarks.md, "Cost per unit of
# work"; issue #18).
#
#   scripts/bench-cost.sh           full run, ~8 minutes on 2 cores (plus the builds)
#   scripts/bench-cost.sh --quick   smoke run, ~2 minutes
#   scripts/bench-cost.sh --profile DIR   no measurement: one run of each fan-out against
#                                   sessionhub with `perf record` on its nodes, folded into
#                                   DIR/flamegraph-fanout-<F>.svg with inferno (needs perf,
#                                   and inferno-collapse-perf / inferno-flamegraph on PATH:
#                                   cargo install inferno)
#
# At fixed offered loads well below every target's saturation, it measures the CPU seconds
# of the server processes and of Redis (utime + stime from /proc/PID/stat) per 100 000
# delivered messages at fan-out 1, 100 and 1000 (three nodes on one Redis, HTTP push), and
# per 100 000 session requests, read + write (/get-session) and read-only (/read-session),
# one node on the same Redis, with p50 / p99 latency (publish-to-delivery for fan-out).
# Each measurement runs ROUNDS times, the targets in a different order each round, and the
# report gives the median and the spread, and sessionhub's ratio to each peer: the ratio of
# the medians and the median (min-max) of the ratios paired by round.
#
# The machine is 2 cores shared with other work: rates (delivered/s) would mostly measure
# the scheduler, CPU time per unit of work is what compares. The loads are fixed and the
# same for every target, so every target does the same work.
#
# Writes bench/results/<date>-cost.json and .md. Environment, besides bench.sh's
# SESSIONHUB_BIN, SESSIONHUB_REV, BENCH_KEEP, BENCH_THREADS and BENCH_PREBUILT=1 (build
# nothing, use the binaries there):
#   COST_ROUNDS=3          repetitions of every measurement
#   COST_DURATION=8        seconds of load per measurement
#   COST_F1_RATE=2000      pushes/s at fan-out 1 (= deliveries/s)
#   COST_FAN_DELIVERIES=20000  deliveries/s at fan-out 100 and 1000 (200 and 20 pushes/s)
#   COST_SESSION_RATE=2000 session requests/s
#   COST_FANOUT_TARGETS="sessionhub sessionhub-nohistory socketioxide socketio"
#   COST_SESSION_TARGETS="sessionhub tower-sessions"   (either empty: none)
#   COST_SESSIONHUB_B=path another sessionhub binary, measured as the targets sessionhub-b
#                          (fan-out, with history) and sessionhub-b (sessions) in the same
#                          rounds: a before/after of a change on an equal footing
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0; PROFILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --profile) PROFILE=$(mkdir -p "$2" && cd "$2" && pwd); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=scripts/lib/profile.sh
source scripts/lib/profile.sh
[ -z "$PROFILE" ] || profile_tools

SCRATCH_NAME=sessionhub-cost
# shellcheck source=scripts/lib/bench-setup.sh
source scripts/lib/bench-setup.sh

if [ $QUICK = 1 ]; then
  ROUNDS=${COST_ROUNDS:-1}; DURATION=${COST_DURATION:-3}; CLIENTS=500
else
  ROUNDS=${COST_ROUNDS:-3}; DURATION=${COST_DURATION:-8}; CLIENTS=1000
fi
F1_RATE=${COST_F1_RATE:-2000}
FAN_DELIVERIES=${COST_FAN_DELIVERIES:-20000}
SESSION_RATE=${COST_SESSION_RATE:-2000}
# shellcheck disable=SC2206 # word lists
FANOUT_TARGETS=(${COST_FANOUT_TARGETS-sessionhub sessionhub-nohistory socketioxide socketio})
# shellcheck disable=SC2206
SESSION_TARGETS=(${COST_SESSION_TARGETS-sessionhub tower-sessions})
FANOUTS=(1 100 1000)
[ $QUICK = 1 ] && FANOUTS=(1 100 500)

# rotate N WORD...: the words, starting at the Nth (a different order every round).
rotate() {
  local n=$1; shift
  local words=("$@") i
  for i in $(seq 0 $((${#words[@]} - 1))); do echo "${words[$(((i + n) % ${#words[@]}))]}"; done
}

# nodes TARGET: three nodes of TARGET on the Redis; A (addresses), NODE_PIDS.
nodes() {
  local target=$1 i
  A=(); NODE_PIDS=()
  for i in 1 2 3; do
    case "$target" in
      sessionhub) sessionhub_node "sessionhub-$i" cluster ;;
      sessionhub-nohistory) sessionhub_node "sessionhub-nohistory-$i" cluster --history-size 0 ;;
      sessionhub-b) SESSIONHUB=$COST_SESSIONHUB_B sessionhub_node "sessionhub-b-$i" cluster ;;
      *) peer_node "$target" "$target-$i" ;;
    esac
    A+=("$ADDR"); NODE_PIDS+=("$PID")
  done
}

# fanout TARGET ROUND: every fan-out at its fixed load on a fresh set of clients.
fanout() {
  local target=$1 round=$2 f rate flavor=socketio args=() a
  [[ $target == sessionhub* ]] && flavor=sessionhub
  for a in "${A[@]}"; do args+=(--node "$a"); done
  for a in "${NODE_PIDS[@]}"; do args+=(--pid "$a"); done
  for f in "${FANOUTS[@]}"; do
    if [ "$f" = 1 ]; then rate=$F1_RATE; else rate=$(awk -v d="$FAN_DELIVERIES" -v f="$f" 'BEGIN { print d / f }'); fi
    # Sampled from the start of the load (the clients connect in ~2 s) for its duration.
    [ -z "$PROFILE" ] || profile_start "fanout-$f" 3 "$DURATION" "${NODE_PIDS[@]}"
    "$LOADGEN" fanout --label "$target" --flavor "$flavor" --clients "$CLIENTS" --conns-per-user "$f" \
      --publish http --publishers 128 --rate "$rate" --duration "$DURATION" --source-ips 8 \
      --redis-pid "$REDIS_PID" "${args[@]}" --out "$RAW/fanout-$target-f$f-r$round.json" \
      >/dev/null 2>>"$LOGS/loadgen.log" || log "FAILED: fan-out $target f$f round $round (continuing)"
    grep -h 'step 1:' "$LOGS/loadgen.log" | tail -1 | sed "s/^/    f$f: /" >&2 || true
    [ -z "$PROFILE" ] || profile_finish "fanout-$f" "sessionhub nodes, fan-out $f, $rate pushes/s ($target)"
  done
}

if [ -n "$PROFILE" ]; then
  nodes sessionhub
  fanout sessionhub 1
  stop_all_targets
  exit 0
fi

# sessions TARGET ROUND: both routes at the fixed load, one node.
sessions() {
  local target=$1 round=$2 path probe=0
  [ "$round" = 1 ] && probe=50
  case "$target" in
    sessionhub) sessionhub_node sessionhub cluster ;;
    sessionhub-b) SESSIONHUB=$COST_SESSIONHUB_B sessionhub_node sessionhub-b cluster ;;
    *) peer_node "$target" "$target" ;;
  esac
  for path in /get-session /read-session; do
    "$LOADGEN" sessions --label "$target" --node "$ADDR" --redis "$REDIS" --vus 64 \
      --rate "$SESSION_RATE" --duration "$DURATION" --path "$path" --read-path /read-session \
      --probe-requests "$probe" --pid "$PID" --redis-pid "$REDIS_PID" \
      --out "$RAW/sessions-$target-${path#/}-r$round.json" >/dev/null 2>>"$LOGS/loadgen.log" \
      || log "FAILED: sessions $target $path round $round (continuing)"
    grep -h "\\] $path " "$LOGS/loadgen.log" | tail -1 | sed 's/^/    /' >&2 || true
    probe=0
  done
  stop_all_targets
}

for round in $(seq 1 "$ROUNDS"); do
  for target in $(rotate $((round - 1)) "${FANOUT_TARGETS[@]}"); do
    log "fan-out $target, round $round of $ROUNDS"
    nodes "$target"
    fanout "$target" "$round"
    stop_all_targets
  done
  for target in $(rotate $((round - 1)) "${SESSION_TARGETS[@]}"); do
    log "sessions $target, round $round of $ROUNDS"
    sessions "$target" "$round"
  done
done

# --- report --------------------------------------------------------------------------------
NAME=$(date -u +%Y-%m-%d); [ $QUICK = 1 ] && NAME="$NAME-quick"
[ -e "bench/results/$NAME-cost.json" ] && NAME="$NAME-$(date -u +%H%M)"
NAME="$NAME-cost"
mkdir -p bench/results
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- crates 2>/dev/null || commit="$commit+uncommitted"
[ -n "${SESSIONHUB_BIN:-}" ] && commit="${SESSIONHUB_REV:-prebuilt $SESSIONHUB_BIN}"
python3 scripts/lib/cost-report.py "$RAW" "bench/results/$NAME" \
  "date=$(date -u +%Y-%m-%dT%H:%MZ)" "quick=$QUICK" "sessionhub=$commit" \
  "rust_worker_threads=${THREADS:-default}" "redis=$(redis-server --version | grep -o 'v=[^ ]*')" \
  "node=$(node --version)" "rounds=$ROUNDS" "duration=$DURATION" "clients=$CLIENTS" \
  "f1_rate=$F1_RATE" "fan_deliveries=$FAN_DELIVERIES" "session_rate=$SESSION_RATE"
log "done: bench/results/$NAME.json and .md"
