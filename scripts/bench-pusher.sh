#!/usr/bin/env bash
# sessionhub's Pusher endpoint against Sockudo (a Rust Pusher server), the same
# Pusher-protocol load from sessionhub-loadgen (docs/benchmarks.md, "Pusher protocol").
#
#   scripts/bench-pusher.sh           full run, ~15 minutes on 2 cores (plus the builds)
#   scripts/bench-pusher.sh --quick   smoke run, ~4 minutes
#
# Both servers get one app, clients that subscribe to a public channel per user through
# /app/{key}, and events published through the signed HTTP API (POST /apps/{id}/events) by
# one publisher, so each user's messages are sent in order and any reordering is the
# server's. At fan-out 1, 100 and 1000, at fixed offered loads well below saturation, on one
# node (sessionhub embedded, Sockudo's local adapter) and on three nodes sharing one Redis
# (sessionhub --redis, Sockudo's redis adapter), alternating targets round by round, it
# reports node and Redis CPU seconds per 100 000 deliveries (median and spread), p50/p99
# publish-to-delivery, and lost, duplicated and reordered deliveries; then idle memory per
# connection on one node. Writes bench/results/<date>-pusher.json and .md.
#
# Sockudo is built once with `cargo install sockudo --version $SOCKUDO_VERSION --features
# redis --locked` (needs cmake) into bench/target/sockudo, unless SOCKUDO_BIN names a binary
# (built with the redis feature, or its three nodes fall back to local adapters).
# Environment: SESSIONHUB_BIN, SOCKUDO_BIN, PUSHER_ROUNDS (default 5; --quick 2), and
# bench.sh's BENCH_KEEP, BENCH_THREADS and BENCH_PREBUILT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SOCKUDO_VERSION=4.1.1

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

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
      # for three nodes. Run from the scratch directory, so no config/ is picked up.
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
TOML
      local env=(PORT="$PORT" HOST=127.0.0.1 TOKIO_WORKER_THREADS="${THREADS:-1}"
        RATE_LIMITER_ENABLED=false METRICS_ENABLED=false DEBUG=false RUST_LOG=warn
        CACHE_DRIVER=memory QUEUE_DRIVER=memory)
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
stop_targets() {
  stop_all_targets
  NODE_PIDS=()
}

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

for topo in 1 3; do
  for load in "${LOADS[@]}"; do
    read -r fan users rate <<<"$load"
    for round in $(seq 1 "$ROUNDS"); do
      # Alternate who goes first, so drift on the shared machine hits both alike.
      order=(sessionhub sockudo); [ $((round % 2)) = 0 ] && order=(sockudo sessionhub)
      for target in "${order[@]}"; do
        log "$target, $topo node(s), fan-out $fan, round $round"
        A=()
        if [ "$topo" = 1 ]; then
          node "$target" "$target-1" single; A+=("$ADDR")
        else
          for i in 1 2 3; do node "$target" "$target-$i" redis; A+=("$ADDR"); done
        fi
        run_load "$target" "$topo" "$fan" "$users" "$rate" "$round" "${A[@]}"
        stop_targets
      done
    done
  done
done

# --- idle memory ---------------------------------------------------------------------------
for target in sessionhub sockudo; do
  log "$target: $CONNS idle Pusher connections"
  node "$target" "$target-idle" single
  "$LOADGEN" connections --label "$target" --flavor pusher --node "$ADDR" --pid "${NODE_PIDS[0]}" \
    --count "$CONNS" --source-ips 8 --out "$RAW/connections-$target.json" >/dev/null \
    || log "FAILED: connections $target (continuing)"
  stop_targets
done

# --- summary -------------------------------------------------------------------------------
STAMP=$(date +%Y-%m-%d-%H%M)
OUT="$ROOT/bench/results/$STAMP-pusher"
mkdir -p "$ROOT/bench/results"
python3 scripts/lib/pusher_summary.py "$RAW" "$OUT" \
  "$("$SESSIONHUB" --version)" "sockudo $SOCKUDO_VERSION" "$DURATION"
log "results: $OUT.md"
cat "$OUT.md"
