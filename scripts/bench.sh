#!/usr/bin/env bash
# Benchmarks sessionhub against its peers, side by side, in one run (docs/benchmarks.md).
#
#   scripts/bench.sh           full run, ~14 minutes on 2 cores
#   scripts/bench.sh --quick   smoke run, ~3 minutes
#
# Builds everything in release mode, starts a private redis-server on a free port (never
# 6379), runs every scenario against sessionhub and every peer, stops everything it started
# and writes bench/results/<date>[-quick].json, .md (tables) and -*.png (charts).
#
# Environment: SESSIONHUB_BIN=path uses a prebuilt sessionhub binary instead of building
# one (SESSIONHUB_REV=text names its version in the results); BENCH_KEEP=1 keeps the
# scratch directory (logs, raw results); BENCH_THREADS=N gives every Rust target N worker
# threads (default 1, like the single-threaded Node peers; empty: each runtime's default,
# one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SCRATCH_NAME=sessionhub-bench
# shellcheck source=scripts/lib/bench-setup.sh
source scripts/lib/bench-setup.sh

# --- scenario sizes ------------------------------------------------------------------------
if [ $QUICK = 1 ]; then
  FAN=(--clients 500 --duration 2 --max-steps 4 --rate 1000 --factor 2 --refine 1)
  FAN_MODES=(http)
  CONNS=5000
  SESS=(--vus 32 --duration 3)
  SESS_PROBE=50
  SESS_ROUNDS=1
  BENCH_N=50000
else
  FAN=(--clients 1000 --duration 5 --max-steps 9 --rate 2000 --factor 1.6 --refine 2)
  FAN_MODES=(http frame)
  # 50 000 wanted; a process cannot hold more sockets than its descriptor limit.
  CONNS=$((FD_LIMIT - 1000)); [ $CONNS -gt 50000 ] && CONNS=50000
  SESS=(--vus 64 --duration 5)
  SESS_PROBE=100
  SESS_ROUNDS=3
  BENCH_N=300000
fi

# HTTP push: 128 requests in flight. With 32 (before 2026-11-21 04:40) the publisher's round
# trips bounded every target alike: all landed on the same step of the search.
fanout() {
  local label=$1 flavor=$2 mode=$3; shift 3
  local nodes=()
  for a in "$@"; do nodes+=(--node "$a"); done
  for p in "${NODE_PIDS[@]}"; do nodes+=(--pid "$p"); done
  local suffix=""; [ "$mode" = frame ] && suffix="-frame"
  "$LOADGEN" fanout --label "$label$suffix" --flavor "$flavor" --publish "$mode" \
    --publishers $([ "$mode" = frame ] && echo 8 || echo 128) --search "${FAN[@]}" --redis-pid "$REDIS_PID" \
    "${nodes[@]}" --out "$RAW/fanout-$label$suffix.json" >/dev/null \
    || log "FAILED: fan-out $label$suffix (continuing)"
}

# --- fan-out -------------------------------------------------------------------------------
log "fan-out: sessionhub, 3 nodes on Redis"
A=(); NODE_PIDS=()
for i in 1 2 3; do sessionhub_node "sessionhub-$i" cluster; A+=("$ADDR"); NODE_PIDS+=("$PID"); done
for m in "${FAN_MODES[@]}"; do fanout sessionhub sessionhub "$m" "${A[@]}"; done
stop_all_targets

# The peers keep no history; this is sessionhub doing exactly their job.
log "fan-out: sessionhub without history (--history-size 0), 3 nodes on Redis"
A=(); NODE_PIDS=()
for i in 1 2 3; do
  sessionhub_node "sessionhub-nohistory-$i" cluster --history-size 0; A+=("$ADDR"); NODE_PIDS+=("$PID")
done
for m in "${FAN_MODES[@]}"; do fanout sessionhub-nohistory sessionhub "$m" "${A[@]}"; done
stop_all_targets

log "fan-out: sessionhub embedded, 1 node"
sessionhub_node sessionhub-embedded embedded; NODE_PIDS=("$PID")
for m in "${FAN_MODES[@]}"; do fanout sessionhub-embedded sessionhub "$m" "$ADDR"; done
stop_all_targets

for peer in socketioxide socketio; do
  log "fan-out: $peer, 3 nodes on Redis"
  A=(); NODE_PIDS=()
  for i in 1 2 3; do peer_node "$peer" "$peer-$i"; A+=("$ADDR"); NODE_PIDS+=("$PID"); done
  for m in "${FAN_MODES[@]}"; do fanout "$peer" socketio "$m" "${A[@]}"; done
  stop_all_targets
done

# --- idle connections ----------------------------------------------------------------------
connections() {
  local label=$1 flavor=$2
  "$LOADGEN" connections --label "$label" --flavor "$flavor" --node "$ADDR" --pid "$PID" \
    --count "$CONNS" --source-ips 8 --out "$RAW/connections-$label.json" >/dev/null \
    || log "FAILED: connections $label (continuing)"
  stop_all_targets
}
log "connections: $CONNS idle sockets per target"
sessionhub_node sessionhub cluster; connections sessionhub sessionhub
sessionhub_node sessionhub-embedded embedded; connections sessionhub-embedded sessionhub
peer_node socketioxide socketioxide; connections socketioxide socketio
peer_node socketio socketio; connections socketio socketio

# --- sessions ------------------------------------------------------------------------------
# sessions LABEL ROUND: one round against the node just started; the first round also
# probes which commands each request sends. The report keeps each target's median round.
sessions() {
  local label=$1 round=$2; shift 2
  local probe=$SESS_PROBE; [ "$round" = 1 ] || probe=0
  "$LOADGEN" sessions --label "$label" --node "$ADDR" --redis "$REDIS" "${SESS[@]}" "$@" \
    --probe-requests "$probe" --pid "$PID" --redis-pid "$REDIS_PID" \
    --out "$RAW/sessions-$label.r$round.json" >/dev/null \
    || log "FAILED: sessions $label round $round (continuing)"
  stop_all_targets
}
# Rounds alternate the targets, so a spell of foreign load on a shared machine lands on all of
# them rather than on whichever ran at the time.
for round in $(seq 1 "$SESS_ROUNDS"); do
  log "sessions: one node each on the same Redis, round $round of $SESS_ROUNDS"
  sessionhub_node sessionhub cluster; sessions sessionhub "$round" --read-path /read-session
  peer_node tower-sessions tower-sessions; sessions tower-sessions "$round" --read-path /read-session
  peer_node express-session express-session; sessions express-session "$round" --read-path /read-session
done

# --- Redis ceiling -------------------------------------------------------------------------
log "Redis ceiling: redis-benchmark"
payload=$(printf 'x%.0s' $(seq 1 64))
ceiling() {
  local name=$1; shift
  redis-benchmark -p "$REDIS_PORT" -n "$BENCH_N" -c 50 -r 100000 --csv "$@" \
    >"$RAW/ceiling-$name.csv" 2>/dev/null
}
ceiling publish-P1 -P 1 publish ch "$payload"
ceiling publish-P16 -P 16 publish ch "$payload"
ceiling hincrby-P1 -P 1 hincrby "s:__rand_int__" count 1
ceiling hincrby-P16 -P 16 hincrby "s:__rand_int__" count 1
ceiling hset-P16 -P 16 hset "s:__rand_int__" username bench
redis-cli -p "$REDIS_PORT" flushall >/dev/null

# --- report --------------------------------------------------------------------------------
NAME=$(date -u +%Y-%m-%d); [ $QUICK = 1 ] && NAME="$NAME-quick"
# A second run on the same day gets the time too, rather than replacing the first.
[ -e "bench/results/$NAME.json" ] && NAME="$NAME-$(date -u +%H%M)"
mkdir -p bench/results
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- crates 2>/dev/null || commit="$commit+uncommitted"
[ -n "${SESSIONHUB_BIN:-}" ] && commit="${SESSIONHUB_REV:-prebuilt $SESSIONHUB_BIN}"
"$LOADGEN" report --dir "$RAW" --out "bench/results/$NAME.json" \
  --markdown "bench/results/$NAME.md" \
  --note "date=$(date -u +%Y-%m-%dT%H:%MZ)" --note "quick=$QUICK" \
  --note "fd_limit=$FD_LIMIT" --note "sessionhub=$commit" \
  --note "rust_worker_threads=${THREADS:-default}" \
  --note "redis=$(redis-server --version | grep -o 'v=[^ ]*')" \
  --note "node=$(node --version)"
log "done: bench/results/$NAME.json, .md and charts"
