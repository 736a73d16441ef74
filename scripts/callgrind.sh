#!/usr/bin/env bash
# Node user-space instructions (callgrind Ir) per session request and per delivery, for
# before/after comparisons of a change (docs/benchmarks.md: instruction counts do not move
# with foreign load the way wall-clock figures do).
#
#   scripts/callgrind.sh [DIR]    DIR: a workspace root (DIR/target/release/...) or a cargo
#                                 target dir (DIR/release/...); default: this workspace.
#                                 Nothing is built: build it first with
#                                 cargo build --release -p sessionhub-server -p sessionhub-loadgen
#
# Prints one figure a line (the median of CG_REPEAT pairs of runs; each pair's value and the
# spread go to stderr):
#   session_request_ir N   one /get-session (read + increment) on a cluster node
#   delivery_ir N          one push delivered to one socket: an HTTP POST /socket/{user}
#                          fanned out to CG_CLIENTS sockets of that user on one cluster node,
#                          divided by CG_CLIENTS (push_ir: the same per push)
#   delivery_ir_nohistory N, push_ir_nohistory N   the same with --history-size 0
#
# Method: each figure is a difference quotient of two runs of the node under callgrind
# (--threads 1), one with a load of N and one with 2N: (Ir(2N) - Ir(N)) / N. Each run: start
# the node, wait for /readyz (store and broker reach Redis), zero the counters
# (callgrind_control -z; start-up and its timing-dependent retries are not counted), run the
# load with sessionhub-loadgen, stop the node with SIGTERM so callgrind writes its totals. The
# quotient cancels what both runs share (the load generator's connections and logins,
# shutdown). The load is sequential, so each request or push is handled alone (no batching
# that timing could change):
#   - sessions: `sessions` with 1 virtual user (one keep-alive connection, one request at a
#     time) for CG_SESSION_SECS and twice that; divided by the difference in requests the
#     load generator counted (the node is busy throughout; its idle timers, ~40k Ir/s,
#     add well under 0.1 %).
#   - fan-out: `fanout` with CG_CLIENTS sockets of ONE user on the node and 1 HTTP publisher,
#     at CG_PUSH_RATE and twice that pushes/s over the same CG_PUSH_SECS, so the node's
#     timers tick as often in both runs; at these rates each push is fanned out before the
#     next arrives, even under callgrind. Every push must reach every socket exactly once.
# ~90 s per repetition, ~4-5 minutes in all. Pairs mostly agree within ~0.3 %, also with both
# cores otherwise busy; now and then one is ~0.7 % off, hence the median (medians of 3 runs
# at 0a563c9 agreed within 0.4 %: ~54.0k Ir per request, ~10.6k per delivery). Compare figures
# taken on the same machine with the same settings; a "WARNING" line on stderr (the node
# logged a warning during the load, e.g. a Redis reconnect) marks a figure to retake.
#
# Environment: CG_REPEAT (default 3), CG_SESSION_SECS (4), CG_CLIENTS (20), CG_PUSH_RATE (16),
# CG_PUSH_SECS (10), CG_NOHISTORY=0 skips the --history-size 0 pairs, CG_ONLY=sessions|fanout,
# CG_KEEP=1 keeps the scratch directory (callgrind.out.* for callgrind_annotate, logs),
# CG_TIMEOUT (600 s) bounds the whole script.
set -euo pipefail

case "${1:-}" in -h|--help) sed -n '2,44p' "$0"; exit 0 ;; esac
DIR=${1:-"$(cd "$(dirname "$0")/.." && pwd)"}
if [ -x "$DIR/release/sessionhub" ]; then BIN="$DIR/release"
elif [ -x "$DIR/target/release/sessionhub" ]; then BIN="$DIR/target/release"
else echo "no release/sessionhub under $DIR (a workspace root or target dir; build it first)" >&2; exit 2
fi
SESSIONHUB="$BIN/sessionhub"; LOADGEN="$BIN/sessionhub-loadgen"
[ -x "$LOADGEN" ] || { echo "$LOADGEN missing: cargo build --release -p sessionhub-loadgen" >&2; exit 2; }

REPEAT=${CG_REPEAT:-3}
SESSION_SECS=${CG_SESSION_SECS:-4}
CLIENTS=${CG_CLIENTS:-20}
PUSH_RATE=${CG_PUSH_RATE:-16}
PUSH_SECS=${CG_PUSH_SECS:-10}
NOHISTORY=${CG_NOHISTORY:-1}
ONLY=${CG_ONLY:-}
REV=$(git -C "$DIR" rev-parse --short HEAD 2>/dev/null || echo "?")
# quanta (the metrics crate's clock) calibrates the TSC on first use by calling
# clock_gettime for a fixed wall time: 7-17M instructions under callgrind, varying with the
# machine's speed. Not counted (the toggle turns collection off inside it).
VG_FLAGS=(--toggle-collect='quanta::Clock::new' --collect-atstart=yes)

need_apt=()
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

SCRATCH=$(mktemp -d /tmp/sessionhub-callgrind.XXXXXX)
log "measuring $SESSIONHUB ($REV); $REPEAT pairs of runs each; sessions ${SESSION_SECS}/$((SESSION_SECS * 2)) s, fan-out $CLIENTS sockets, $PUSH_RATE/$((PUSH_RATE * 2)) pushes/s for $PUSH_SECS s"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "${CG_KEEP:-0}" = 1 ] || [ $status -ne 0 ]; then
    echo "scratch directory kept: $SCRATCH" >&2
  else
    rm -rf "$SCRATCH"
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Bounds the whole script, whatever hangs.
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${CG_TIMEOUT:-600}" & s=$!
  wait "$s" && { echo "callgrind.sh: over ${CG_TIMEOUT:-600} s, giving up" >&2; kill -TERM $$; } ) &
WATCHDOG=$!
PIDS+=("$WATCHDOG")

NEXT_PORT=$((25000 + RANDOM % 5000))
free_port() {
  # Below the ephemeral range (32768+); never 6379.
  while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
  PORT=$NEXT_PORT
  NEXT_PORT=$((NEXT_PORT + 1))
}
wait_port() {
  local port=$1 pid=$2 what=$3 log=$4
  for _ in $(seq 1 1200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$what did not listen on $port; log:" >&2
  tail -20 "$log" >&2
  exit 1
}

# bg CMD...: runs CMD in the background and waits for it, so that the watchdog's SIGTERM
# interrupts the wait (bash defers traps while a foreground command runs) and the cleanup
# stops it.
bg() {
  "$@" &
  local pid=$! status=0
  PIDS+=("$pid")
  wait "$pid" || status=$?
  forget "$pid"
  return $status
}
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

free_port; REDIS_PORT=$PORT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --protected-mode no --maxclients 1000 >"$SCRATCH/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT" "$REDIS_PID" redis-server "$SCRATCH/redis.log"
REDIS="redis://127.0.0.1:$REDIS_PORT"

# Abuse limits off (they are not what is measured); flags the binary may lack are skipped.
SH_FLAGS=(--threads 1)
SH_HELP=$("$SESSIONHUB" serve --help)
grep -q -- '--max-connections-per-ip' <<<"$SH_HELP" && SH_FLAGS+=(--max-connections-per-ip 1000000)
grep -q -- '--max-messages-per-sec' <<<"$SH_HELP" && SH_FLAGS+=(--max-messages-per-sec 1000000)
grep -q -- '--max-connections-per-user' <<<"$SH_HELP" && SH_FLAGS+=(--max-connections-per-user 100000)

# node_start NAME [FLAG...]: a cluster node under callgrind, ready (/readyz: its store and
# broker reach Redis), counters zeroed; $ADDR, $NODE_PID, $NODE_OUT, $NODE_LOG.
node_start() {
  local name=$1; shift
  free_port
  NODE_OUT="$SCRATCH/callgrind.out.$name"; NODE_LOG="$SCRATCH/$name.log"
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  valgrind --tool=callgrind --callgrind-out-file="$NODE_OUT" "${VG_FLAGS[@]}" \
    "$SESSIONHUB" serve --listen "127.0.0.1:$PORT" --node-id "cg-$name" \
    --data-dir "$SCRATCH/data-$name" --redis "$REDIS" "${SH_FLAGS[@]}" "$@" \
    >"$NODE_LOG" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  wait_port "$PORT" "$NODE_PID" "node $name" "$NODE_LOG"
  ADDR="127.0.0.1:$PORT"
  local tries=0
  until curl -sf -m 20 -o /dev/null "http://$ADDR/readyz"; do
    tries=$((tries + 1))
    [ $tries -lt 120 ] || { echo "node $name not ready after 60 s; log:" >&2; tail -20 "$NODE_LOG" >&2; exit 1; }
    sleep 0.5
  done
  # Start-up (and its retries, which depend on timing) is not counted.
  callgrind_control -z "$NODE_PID" >/dev/null 2>&1 \
    || { echo "callgrind_control -z $NODE_PID failed" >&2; exit 1; }
  ZEROED_AT=$(grep -c '' "$NODE_LOG" || true)
}
# node_stop: SIGTERM, wait for callgrind to write its output; $IR is what was counted since
# node_start zeroed the counters.
node_stop() {
  kill -TERM "$NODE_PID"
  local waited=0
  while kill -0 "$NODE_PID" 2>/dev/null; do
    sleep 0.2; waited=$((waited + 1))
    if [ $waited -gt 600 ]; then
      kill -9 "$NODE_PID" 2>/dev/null || true
      echo "node did not stop within 120 s" >&2; exit 1
    fi
  done
  wait "$NODE_PID" 2>/dev/null || true
  forget "$NODE_PID"
  IR=$(awk '/^totals:/ { print $2; exit }' "$NODE_OUT" 2>/dev/null)
  [ -n "$IR" ] || { echo "no callgrind totals in $NODE_OUT; log:" >&2; tail -20 "$NODE_LOG" >&2; exit 1; }
  # Reconnects to Redis and the like cost instructions that depend on timing.
  local warnings
  warnings=$(tail -n +"$((ZEROED_AT + 1))" "$NODE_LOG" | grep -v '^==' | grep -c -E 'WARN|ERROR' || true)
  [ "$warnings" = 0 ] || log "WARNING: the node logged $warnings warnings/errors during the load (see $NODE_LOG; CG_KEEP=1 keeps it): this pair's figure is suspect"
}

# sessions NAME SECS: $IR and $COUNT (successful /get-session requests).
sessions() {
  local name=$1 secs=$2
  node_start "$name"
  bg "$LOADGEN" sessions --label "$name" --node "$ADDR" --redis "$REDIS" --vus 1 \
    --duration "$secs" --probe-requests 0 --out "$SCRATCH/$name.json" \
    >/dev/null 2>"$SCRATCH/$name.loadgen.log" \
    || { tail -5 "$SCRATCH/$name.loadgen.log" >&2; exit 1; }
  node_stop
  COUNT=$(jq '.requests' "$SCRATCH/$name.json")
  local errors; errors=$(jq '.errors + .count_mismatches' "$SCRATCH/$name.json")
  [ "$errors" = 0 ] || { echo "$name: $errors errors or count mismatches" >&2; exit 1; }
  log "$name: $COUNT requests in $secs s, Ir $IR"
}

# fanout NAME RATE [FLAG...]: $IR, $PUSHES and $DELIVERED.
fanout() {
  local name=$1 rate=$2; shift 2
  node_start "$name" "$@"
  bg "$LOADGEN" fanout --label "$name" --flavor sessionhub --node "$ADDR" \
    --clients "$CLIENTS" --conns-per-user "$CLIENTS" --source-ips 1 \
    --publish http --publishers 1 --rate "$rate" --duration "$PUSH_SECS" \
    --p99-limit-ms 1000000 --out "$SCRATCH/$name.json" \
    >/dev/null 2>"$SCRATCH/$name.loadgen.log" \
    || { tail -5 "$SCRATCH/$name.loadgen.log" >&2; exit 1; }
  node_stop
  PUSHES=$(jq '.steps[0].published' "$SCRATCH/$name.json")
  DELIVERED=$(jq '.steps[0].delivery.delivered' "$SCRATCH/$name.json")
  local bad; bad=$(jq '.steps[0] | .publish_errors + .delivery.lost + .delivery.duplicated + .disconnects' "$SCRATCH/$name.json")
  [ "$bad" = 0 ] && [ "$DELIVERED" = $((PUSHES * CLIENTS)) ] || {
    echo "$name: $PUSHES pushes, $DELIVERED delivered, $bad errors/lost/duplicated/disconnects" >&2; exit 1; }
  log "$name: $PUSHES pushes, $DELIVERED deliveries, Ir $IR"
}

quotient() { echo $(( ($1 + $2 / 2) / $2 )); }
median() {
  printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); print (NR % 2) ? v[m] : int((v[m] + v[m + 1]) / 2 + 0.5) }'
}
# figure NAME VALUE...: the median of the pairs on stdout; every pair and the spread on stderr.
figure() {
  local name=$1; shift
  log "$name per pair: $* (spread $(printf '%s\n' "$@" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f %%", 100 * (hi - lo) / lo }'))"
  echo "$name $(median "$@")"
}

if [ -z "$ONLY" ] || [ "$ONLY" = sessions ]; then
  values=()
  for r in $(seq 1 "$REPEAT"); do
    sessions "sessions-$r-1x" "$SESSION_SECS"; IR1=$IR; N1=$COUNT
    sessions "sessions-$r-2x" "$((SESSION_SECS * 2))"; IR2=$IR; N2=$COUNT
    [ "$N2" -gt "$N1" ] || { echo "the longer sessions run did no more requests ($N1, $N2)" >&2; exit 1; }
    values+=("$(quotient $((IR2 - IR1)) $((N2 - N1)))")
  done
  figure session_request_ir "${values[@]}"
fi

# fanout_pairs SUFFIX [FLAG...]
fanout_pairs() {
  local suffix=$1 r deliveries=() pushes=(); shift
  for r in $(seq 1 "$REPEAT"); do
    fanout "fanout$suffix-$r-1x" "$PUSH_RATE" "$@"; local ir1=$IR p1=$PUSHES d1=$DELIVERED
    fanout "fanout$suffix-$r-2x" "$((PUSH_RATE * 2))" "$@"; local ir2=$IR p2=$PUSHES d2=$DELIVERED
    deliveries+=("$(quotient $((ir2 - ir1)) $((d2 - d1)))")
    pushes+=("$(quotient $((ir2 - ir1)) $((p2 - p1)))")
  done
  figure "delivery_ir$suffix" "${deliveries[@]}"
  figure "push_ir$suffix" "${pushes[@]}"
}
if [ -z "$ONLY" ] || [ "$ONLY" = fanout ]; then
  fanout_pairs ""
  [ "$NOHISTORY" = 1 ] && fanout_pairs _nohistory --history-size 0
fi
log "done"
