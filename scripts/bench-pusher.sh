#!/usr/bin/env bash
# sessionhub's Pusher endpoint against Sockudo (a Rust Pusher server), the same
# Pusher-protocol load from sessionhub-loadgen (docs/benchmarks.md, "Pusher protocol").
#
#   scripts/bench-pusher.sh           full run, ~17 minutes on 2 cores (plus the builds:
#                                     Sockudo's alone took 30 minutes here)
#   scripts/bench-pusher.sh --quick   smoke run, ~5 minutes
#   scripts/bench-pusher.sh --profile DIR   no measurement: one run of each fan-out on three
#       nodes per target with `perf record` on its nodes, drawn as DIR/flamegraph-pusher-
#       <target>-<F>.svg (needs perf, inferno-collapse-perf and inferno-flamegraph on PATH:
#       cargo install inferno)
#
# Both servers get one app, clients that subscribe to a public channel per user through
# /app/{key}, and events published through the signed HTTP API (POST /apps/{id}/events) by
# one publisher, so each user's messages are sent in order and any reordering is the
# server's. At fan-out 1, 100 and 1000, at fixed offered loads well below saturation, on one
# node (sessionhub embedded, Sockudo's local adapter) and on three nodes sharing one Redis
# (sessionhub --redis, Sockudo's redis adapter), alternating targets round by round, it
# reports node and Redis CPU seconds per 100 000 deliveries (median and spread), p50/p99
# publish-to-delivery, and lost, duplicated and reordered deliveries; then idle memory per
# subscribed connection on a node alone and on a node of three. Before measuring, it checks
# that each target's three nodes are one server (a publish on any node reaches clients on
# every node) and refuses to run otherwise. Writes bench/results/<date>-pusher.json and .md.
#
# Sockudo is built once with `cargo install sockudo --version $SOCKUDO_VERSION --features
# redis --locked` (needs cmake) into bench/target/sockudo, unless SOCKUDO_BIN names a binary
# (built with the redis feature: without it the three-node check refuses to run).
# Environment: SESSIONHUB_BIN, SOCKUDO_BIN, PUSHER_ROUNDS (default 5; --quick 2), and
# bench.sh's BENCH_KEEP, BENCH_THREADS and BENCH_PREBUILT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SOCKUDO_VERSION=4.1.1

QUICK=0; PROFILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --profile) PROFILE=$(mkdir -p "$2" && cd "$2" && pwd); shift ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=scripts/lib/profile.sh
source scripts/lib/profile.sh
[ -z "$PROFILE" ] || profile_tools

if [ -z "${SOCKUDO_BIN:-}" ] && ! command -v cmake >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq cmake  # Sockudo's build needs it
fi
# Tools, scratch directory, release builds, a private Redis ($REDIS, $REDIS_PID),
# sessionhub_node and stop_all_targets: shared with bench.sh and bench-cost.sh.
SCRATCH_NAME=sessionhub-pusher BENCH_PEERS=0
# shellcheck source=scripts/lib/bench-setup.sh
source scripts/lib/bench-setup.sh

if [ -n "${SOCKUDO_BIN:-}" ]; then
  SOCKUDO="$SOCKUDO_BIN"
else
  SOCKUDO="$ROOT/bench/target/sockudo/bin/sockudo"
  if [ ! -x "$SOCKUDO" ]; then
    log "building sockudo $SOCKUDO_VERSION (once)"
    # Its metrics use tokio's unstable runtime metrics, which its own repository enables in
    # .cargo/config.toml; cargo install from crates.io does not read that file.
    # Its Redis adapter is a cargo feature, off by default: without it ADAPTER_DRIVER=redis
    # falls back to the local adapter (logged as a warning) and three nodes lose two thirds.
    RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR="$ROOT/bench/target/sockudo-build" \
      cargo install sockudo --version "$SOCKUDO_VERSION" --features redis --locked \
      --root "$ROOT/bench/target/sockudo"
  fi
fi

APP_ID=bench; APP_KEY=bench-key; APP_SECRET=bench-secret
export LOADGEN_PUSHER_APP="$APP_ID:$APP_KEY:$APP_SECRET"
NODE_PIDS=()

# node TARGET NAME MODE: one node of TARGET (sessionhub|sockudo), MODE single|redis; its
# address in $ADDR, its pid appended to NODE_PIDS.
node() {
  local target=$1 name=$2 mode=$3
  case "$target" in
    sessionhub)
      local cluster=embedded; [ "$mode" = redis ] && cluster=cluster
      sessionhub_node "$name" "$cluster" --pusher-app "$APP_ID:$APP_KEY:$APP_SECRET"
      ;;
    sockudo)
      free_port
      # The same footing: the app in a config file of its own with room for every
      # connection (the default app takes 100), no rate limits (its defaults, 20 connections
      # and 100 API calls a minute per address, would refuse the load, as sessionhub's are
      # lifted by SH_FLAGS), no metrics listener, one worker thread, and its Redis adapter
      # for three nodes with local fallback off. Run from the scratch directory, so no
      # config/ is picked up.
      cat >"$SCRATCH/sockudo.toml" <<TOML
[app_manager]
driver = "memory"
[app_manager.array]
[[app_manager.array.apps]]
id = "$APP_ID"
key = "$APP_KEY"
secret = "$APP_SECRET"
enabled = true
max_connections = 1000000
[rate_limiter]
enabled = false
[metrics]
enabled = false
[adapter.cluster_health]
heartbeat_interval_ms = $SOCKUDO_HEARTBEAT_MS
TOML
      local env=(PORT="$PORT" HOST=127.0.0.1 TOKIO_WORKER_THREADS="${THREADS:-1}"
        RATE_LIMITER_ENABLED=false METRICS_ENABLED=false DEBUG=false RUST_LOG=warn
        CACHE_DRIVER=memory QUEUE_DRIVER=memory ADAPTER_FALLBACK_TO_LOCAL=false)
      if [ "$mode" = redis ]; then
        env+=(ADAPTER_DRIVER=redis REDIS_URL="$REDIS")
      else
        env+=(ADAPTER_DRIVER=local)
      fi
      cd "$SCRATCH"
      start "$name" "$PORT" env "${env[@]}" "$SOCKUDO" --config "$SCRATCH/sockudo.toml"
      cd "$ROOT"
      ADDR="127.0.0.1:$PORT"
      ;;
  esac
  NODE_PIDS+=("$PID")
}
# Sockudo's adapter skips Redis while a node counts no other node, and it counts the others
# from their heartbeats, every 10 s by default (adapter.cluster_health; the CLUSTER_HEALTH_*
# variables set another copy the adapter does not read): a node started last publishes to
# itself alone for up to 10 s and a third of deliveries are lost. Heartbeats every second
# (three small Redis messages a second) and a wait of two and a half before any client
# connects let every node know the other two, as in a cluster that has been up for a while.
SOCKUDO_HEARTBEAT_MS=1000

# three_nodes TARGET NAME: three nodes of TARGET on the Redis, named NAME-1..3, ready to
# deliver across nodes; their addresses in A.
three_nodes() {
  local target=$1 name=$2 i
  A=()
  for i in 1 2 3; do node "$target" "$name-$i" redis; A+=("$ADDR"); done
  [ "$target" = sockudo ] && sleep "$(awk -v ms="$SOCKUDO_HEARTBEAT_MS" 'BEGIN { print ms * 2.5 / 1000 }')"
  return 0
}
stop_targets() {
  stop_all_targets
  NODE_PIDS=()
}

# --- three nodes must be one server -------------------------------------------------------
# A three-node figure means something only if a publish on any node reaches clients on every
# node: a Sockudo without its redis feature, or whose adapter fell back to local, delivers a
# third and looks three times cheaper. One user with a connection on each node, and
# publishes round-robin over the nodes (the load generator's placement), so every pair of
# publishing node and receiving node is exercised; any loss or duplicate refuses the run
# before anything is measured. The result goes into the summary as evidence.
check_cross_node() {
  local target=$1 nodes=() a
  three_nodes "$target" "$target-check"
  for a in "${A[@]}"; do nodes+=(--node "$a"); done
  local out="$RAW/check-$target.json"
  "$LOADGEN" fanout --label "$target" --flavor pusher --publish http --publishers 1 \
    --clients 3 --conns-per-user 3 --rate 30 --duration 1 --source-ips 1 "${nodes[@]}" \
    --out "$out" >/dev/null 2>"$LOGS/check-$target.log" || true
  stop_targets
  local expected lost duplicated
  read -r expected lost duplicated < <(jq -r \
    '.steps[0].delivery | "\(.expected) \(.lost) \(.duplicated)"' "$out" 2>/dev/null || echo "0 ? ?")
  if [ "${expected:-0}" = 0 ] || [ "$lost" != 0 ] || [ "$duplicated" != 0 ]; then
    echo "refusing to run: $target on three nodes sharing Redis delivered ${expected:-0} expected," \
      "${lost:-?} lost, ${duplicated:-?} duplicated (a publish on one node must reach clients" \
      "on the others); node logs in $LOGS" >&2
    tail -n 5 "$LOGS/check-$target.log" "$LOGS/$target-check-"*.log >&2 || true
    exit 1
  fi
  log "$target: publishes on each of three nodes reached clients on all three ($expected deliveries)"
}
for target in sessionhub sockudo; do check_cross_node "$target"; done

# --- fixed loads ---------------------------------------------------------------------------
# fan-out F: users x F connections, R publishes per second: deliveries/s = R x F.
if [ $QUICK = 1 ]; then
  LOADS=("1 500 500" "100 5 50" "1000 1 10"); DURATION=3; ROUNDS=${PUSHER_ROUNDS:-2}; CONNS=3000
else
  LOADS=("1 1000 1000" "100 10 100" "1000 2 10"); DURATION=8; ROUNDS=${PUSHER_ROUNDS:-5}; CONNS=15000
fi

run_load() {
  local target=$1 topo=$2 fan=$3 users=$4 rate=$5 round=$6; shift 6
  local nodes=() a
  for a in "$@"; do nodes+=(--node "$a"); done
  for a in "${NODE_PIDS[@]}"; do nodes+=(--pid "$a"); done
  [ "$topo" = 3 ] && nodes+=(--redis-pid "$REDIS_PID")
  "$LOADGEN" fanout --label "$target-$topo-$fan-$round" --flavor pusher --publish http \
    --publishers 1 --clients $((users * fan)) --conns-per-user "$fan" --rate "$rate" \
    --duration "$DURATION" --source-ips 4 --p99-limit-ms 1000 "${nodes[@]}" \
    --out "$RAW/fanout-$target-$topo-$fan-$round.json" >/dev/null \
    || log "FAILED: $target $topo node(s), fan-out $fan, round $round (continuing)"
}

if [ -n "$PROFILE" ]; then
  for load in "${LOADS[@]}"; do
    read -r fan users rate <<<"$load"
    for target in sessionhub sockudo; do
      log "profile: $target, 3 nodes, fan-out $fan"
      three_nodes "$target" "$target"
      # From about when the clients are connected to the end of the load.
      profile_start "pusher-$target-$fan" 2 "$DURATION" "${NODE_PIDS[@]}"
      run_load "$target" 3 "$fan" "$users" "$rate" profile "${A[@]}"
      profile_finish "pusher-$target-$fan" "$target, three nodes, fan-out $fan, $rate publishes/s"
      stop_targets
    done
  done
  exit 0
fi

for topo in 1 3; do
  for load in "${LOADS[@]}"; do
    read -r fan users rate <<<"$load"
    for round in $(seq 1 "$ROUNDS"); do
      # Alternate who goes first, so drift on the shared machine hits both alike.
      order=(sessionhub sockudo); [ $((round % 2)) = 0 ] && order=(sockudo sessionhub)
      for target in "${order[@]}"; do
        log "$target, $topo node(s), fan-out $fan, round $round"
        if [ "$topo" = 1 ]; then
          node "$target" "$target-1" single; A=("$ADDR")
        else
          three_nodes "$target" "$target"
        fi
        run_load "$target" "$topo" "$fan" "$users" "$rate" "$round" "${A[@]}"
        stop_targets
      done
    done
  done
done

# --- idle memory ---------------------------------------------------------------------------
# Connections subscribed to a channel each, on one node alone and on one node of a cluster
# (sessionhub --redis, Sockudo's redis adapter), where a subscription may also hold state for
# the shared bus; the other two nodes of a cluster would not change this node's memory.
for topo in 1 3; do
  mode=single; [ "$topo" = 3 ] && mode=redis
  for target in sessionhub sockudo; do
    log "$target ($topo node(s) topology): $CONNS idle Pusher connections"
    node "$target" "$target-idle-$topo" "$mode"
    "$LOADGEN" connections --label "$target-$topo" --flavor pusher --node "$ADDR" \
      --pid "${NODE_PIDS[0]}" --count "$CONNS" --source-ips 8 \
      --out "$RAW/connections-$target-$topo.json" >/dev/null \
      || log "FAILED: connections $target, $topo node(s) (continuing)"
    stop_targets
  done
done

# --- summary -------------------------------------------------------------------------------
STAMP=$(date +%Y-%m-%d-%H%M)
OUT="$ROOT/bench/results/$STAMP-pusher"
mkdir -p "$ROOT/bench/results"
python3 scripts/lib/pusher_summary.py "$RAW" "$OUT" \
  "$("$SESSIONHUB" --version)" "sockudo $SOCKUDO_VERSION" "$DURATION"
log "results: $OUT.md"
cat "$OUT.md"
