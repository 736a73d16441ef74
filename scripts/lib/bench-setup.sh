# Shared by scripts/bench.sh and scripts/bench-cost.sh (sourced, not run): the tools, a
# scratch directory removed at exit (kept with BENCH_KEEP=1 or on failure), the release
# builds of sessionhub, the load generator and every peer, a private redis-server on a free
# port, and functions that start one sessionhub node or one peer node on it. The caller
# sets SCRATCH_NAME (the scratch directory's prefix) and has cd'd to the repository root
# (ROOT). Honours SESSIONHUB_BIN, BENCH_THREADS and BENCH_KEEP as bench.sh documents them,
# BENCH_PREBUILT=1 (below), and BENCH_PEERS=0 (the caller needs none of bench/peers).
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
SCRATCH=$(mktemp -d "/tmp/${SCRATCH_NAME:-sessionhub-bench}.XXXXXX")
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
# BENCH_PREBUILT=1 builds nothing and uses the binaries and node_modules already there (a
# measurement next to a build of the same workspace would wait on cargo's lock).
LOADGEN="$ROOT/target/release/sessionhub-loadgen"
SESSIONHUB="${SESSIONHUB_BIN:-$ROOT/target/release/sessionhub}"
PEER_SIOX="$ROOT/bench/target/release/peer-socketioxide"
PEER_TOWER="$ROOT/bench/target/release/peer-tower-sessions"
if [ "${BENCH_PREBUILT:-0}" != 1 ]; then
  log "building (release)"
  cargo build --release --locked -p sessionhub-loadgen
  [ -n "${SESSIONHUB_BIN:-}" ] || cargo build --release --locked -p sessionhub-server
  if [ "${BENCH_PEERS:-1}" != 0 ]; then
    export CARGO_TARGET_DIR="$ROOT/bench/target"
    cargo build --release --manifest-path bench/peers/socketioxide/Cargo.toml
    cargo build --release --manifest-path bench/peers/tower-sessions/Cargo.toml
    unset CARGO_TARGET_DIR
    (cd bench/peers/node && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
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
