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

log() { printf '\n=== %s [%s]\n' "$*" "$(date +%T)" >&2; }

# --- tools -------------------------------------------------------------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from rustup.rs" >&2; exit 1; }

# Every socket is a file descriptor, on both ends: take the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

# --- scratch space and cleanup -------------------------------------------------------------
SCRATCH=$(mktemp -d /tmp/sessionhub-bench.XXXXXX)
RAW="$SCRATCH/raw"; LOGS="$SCRATCH/logs"
mkdir -p "$RAW" "$LOGS"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ $status -ne 0 ]; then
    echo "scratch directory kept: $SCRATCH" >&2
  else
    rm -rf "$SCRATCH"
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build ---------------------------------------------------------------------------------
log "building (release)"
cargo build --release --locked -p sessionhub-loadgen
LOADGEN="$ROOT/target/release/sessionhub-loadgen"
if [ -n "${SESSIONHUB_BIN:-}" ]; then
  SESSIONHUB="$SESSIONHUB_BIN"
else
  cargo build --release --locked -p sessionhub-server
  SESSIONHUB="$ROOT/target/release/sessionhub"
fi
export CARGO_TARGET_DIR="$ROOT/bench/target"
cargo build --release --manifest-path bench/peers/socketioxide/Cargo.toml
cargo build --release --manifest-path bench/peers/tower-sessions/Cargo.toml
unset CARGO_TARGET_DIR
PEER_SIOX="$ROOT/bench/target/release/peer-socketioxide"
PEER_TOWER="$ROOT/bench/target/release/peer-tower-sessions"
(cd bench/peers/node && npm ci --no-audit --no-fund --loglevel=error)
NODE_PEERS="$ROOT/bench/peers/node"

# Flags that newer sessionhub versions have: lift the per-IP and per-connection limits,
# which are abuse protections, not what is measured here.
SH_FLAGS=()
SH_HELP=$("$SESSIONHUB" serve --help)
grep -q -- '--max-connections-per-ip' <<<"$SH_HELP" && SH_FLAGS+=(--max-connections-per-ip 1000000)
grep -q -- '--max-messages-per-sec' <<<"$SH_HELP" && SH_FLAGS+=(--max-messages-per-sec 1000000)
grep -q -- '--max-connections-per-user' <<<"$SH_HELP" && SH_FLAGS+=(--max-connections-per-user 1000)
# Every Rust target gets the same number of worker threads: sessionhub with --threads, the
# peers (#[tokio::main]) with TOKIO_WORKER_THREADS. Three nodes, Redis and the load generator
# share 2 cores, where wake-ups between workers cost more than a second worker brings.
THREADS=${BENCH_THREADS-1}
PEER_ENV=()
if [ -n "$THREADS" ]; then
  grep -q -- '--threads' <<<"$SH_HELP" && SH_FLAGS+=(--threads "$THREADS")
  PEER_ENV=(env "TOKIO_WORKER_THREADS=$THREADS")
fi

# --- processes -----------------------------------------------------------------------------
NEXT_PORT=$((20000 + RANDOM % 5000))
# shellcheck source=scripts/lib/processes.sh
source scripts/lib/processes.sh
stop_all_targets() {
  # Stops every process started since the Redis server (index 0).
  local keep=("${PIDS[0]}")
  for pid in "${PIDS[@]:1}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:1}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  PIDS=("${keep[@]}")
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
}

free_port; REDIS_PORT=$PORT
start redis "$REDIS_PORT" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
  --appendonly no --maxclients 10000 --protected-mode no
REDIS="redis://127.0.0.1:$REDIS_PORT"
REDIS_PID=$PID

# sessionhub NAME [cluster|embedded] [FLAG...]: one node; its address in $ADDR, pid in $PID.
sessionhub_node() {
  local name=$1 mode=$2
  free_port
  local args=(serve --listen "127.0.0.1:$PORT" --node-id "$name" --data-dir "$SCRATCH/data-$name")
  [ "$mode" = cluster ] && args+=(--redis "$REDIS")
  args+=("${@:3}")
  start "$name" "$PORT" "$SESSIONHUB" "${args[@]}" "${SH_FLAGS[@]}"
  ADDR="127.0.0.1:$PORT"
}
# peer KIND NAME: one peer node; $ADDR, $PID.
peer_node() {
  local kind=$1 name=$2
  free_port
  case "$kind" in
    socketioxide) start "$name" "$PORT" "${PEER_ENV[@]}" "$PEER_SIOX" "$PORT" "$REDIS" ;;
    socketio) start "$name" "$PORT" node "$NODE_PEERS/socketio.js" "$PORT" "$REDIS" ;;
    tower-sessions) start "$name" "$PORT" "${PEER_ENV[@]}" "$PEER_TOWER" "$PORT" "$REDIS" ;;
    express-session) start "$name" "$PORT" node "$NODE_PEERS/express-session.js" "$PORT" "$REDIS" ;;
  esac
  ADDR="127.0.0.1:$PORT"
}

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
