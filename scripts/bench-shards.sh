#!/usr/bin/env bash
# Fan-out on a Redis Cluster of 1 shard and of 3 shards, side by side (docs/benchmarks.md,
# "Redis Cluster: 1 shard vs 3").
#
#   scripts/bench-shards.sh           full run, ~5 minutes on 2 cores (plus the build)
#   scripts/bench-shards.sh --quick   smoke run, ~2 minutes
#
# Builds sessionhub and the load generator in release mode, starts two private Redis
# Clusters (1 primary; 3 primaries; no replicas, whose CPU would have to be counted too) on
# free ports, and three sessionhub nodes with --redis-cluster on one of them at a time. It
# runs fan-out at one fixed offered load several times, alternating 1 and 3 shards, then a
# rate search on each; it meters the CPU of the nodes and of every primary, and counts the
# sharded subscription connections (CLIENT LIST, ssub > 0) each primary holds, and from
# which node, and reads Redis's own counters (commands, system calls, wake-ups) around each
# run. Stops everything it started; writes bench/results/<date>-shards.json and .md.
#
# Environment: SESSIONHUB_BIN=path uses a prebuilt sessionhub (SESSIONHUB_REV=text names it
# in the results); BENCH_KEEP=1 keeps the scratch directory (logs, raw results);
# BENCH_THREADS=N gives each node N worker threads (default 1, as in scripts/bench.sh);
# SHARDS_RATE=pushes/s and SHARDS_ROUNDS=N override the fixed load and its repetitions.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '\n=== %s [%s]\n' "$*" "$(date +%T)" >&2; }

# --- tools -------------------------------------------------------------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from rustup.rs" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- scratch space and cleanup -------------------------------------------------------------
SCRATCH=$(mktemp -d /tmp/sessionhub-shards.XXXXXX)
RAW="$SCRATCH/raw"; LOGS="$SCRATCH/logs"
mkdir -p "$RAW" "$LOGS"
PIDS=()       # everything started, Redis first
NODE_PIDS=()  # the sessionhub nodes running now
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
SH_FLAGS=(--max-connections-per-ip 1000000 --max-messages-per-sec 1000000
  --max-connections-per-user 1000)
THREADS=${BENCH_THREADS-1}
[ -n "$THREADS" ] && SH_FLAGS+=(--threads "$THREADS")

# --- sizes ---------------------------------------------------------------------------------
# The fixed load is below every setup's limit (no loss, publisher on schedule), so the two
# setups do the same work and their CPU per delivery compares like for like. 1000 pushes/s
# is what both setups sustained on 2026-12-06 (publisher on schedule, no loss) with other
# work taking 1.1-1.5 of the 2 cores; at 1500 the 3-shard setup fell behind. On a quiet
# machine SHARDS_RATE can be several times higher (bench.sh's searches pass 24 000).
if [ $QUICK = 1 ]; then
  CLIENTS=500; RATE=${SHARDS_RATE:-1000}; DURATION=5; ROUNDS=${SHARDS_ROUNDS:-2}; IDLE_SECS=3
  SEARCH=(--duration 2 --max-steps 4 --rate 1000 --factor 2 --refine 1)
else
  CLIENTS=1000; RATE=${SHARDS_RATE:-1000}; DURATION=15; ROUNDS=${SHARDS_ROUNDS:-5}; IDLE_SECS=10
  SEARCH=(--duration 5 --max-steps 9 --rate 1000 --factor 1.6 --refine 2)
fi
FAN=(--flavor sessionhub --clients "$CLIENTS" --conns-per-user 2 --publish http --publishers 128)

# --- ports ---------------------------------------------------------------------------------
# A cluster node also listens on its port + 10000 (the cluster bus). Ports come from
# 12000..22000, buses from 22000..32000: both below the ephemeral range (32768+), so that
# client sockets never take one first.
NEXT_PORT=$((12000 + RANDOM % 8000))
BUS_OFFSET=10000
# shellcheck source=scripts/lib/processes.sh
source scripts/lib/processes.sh

# --- Redis Clusters ------------------------------------------------------------------------
# cluster NAME SHARDS: SHARDS primaries, every slot served. Leaves their ports in
# CLUSTER_PORTS and pids in CLUSTER_PIDS, in the same order.
cluster() {
  local name=$1 shards=$2 i
  CLUSTER_PORTS=(); CLUSTER_PIDS=()
  for i in $(seq 1 "$shards"); do
    free_port
    mkdir -p "$SCRATCH/$name-$i"
    start "$name-$i" "$PORT" redis-server --port "$PORT" --bind 127.0.0.1 --dir "$SCRATCH/$name-$i" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --save '' --appendonly no --maxclients 10000 --protected-mode no
    CLUSTER_PORTS+=("$PORT"); CLUSTER_PIDS+=("$PID")
  done
  if [ "$shards" = 1 ]; then
    # redis-cli --cluster create wants 3 primaries at least.
    redis-cli -p "${CLUSTER_PORTS[0]}" CLUSTER ADDSLOTSRANGE 0 16383 >/dev/null
  else
    local addrs=()
    for p in "${CLUSTER_PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
      >"$LOGS/$name-create.log" 2>&1 || { tail -20 "$LOGS/$name-create.log" >&2; exit 1; }
  fi
  local ok
  for _ in $(seq 1 300); do
    ok=1
    for p in "${CLUSTER_PORTS[@]}"; do
      local info
      info=$(redis-cli -p "$p" CLUSTER INFO | tr -d '\r')
      grep -qx 'cluster_state:ok' <<<"$info" && grep -qx 'cluster_slots_assigned:16384' <<<"$info" \
        && grep -qx "cluster_known_nodes:$shards" <<<"$info" || ok=0
    done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  echo "cluster $name did not settle:" >&2
  redis-cli -p "${CLUSTER_PORTS[0]}" CLUSTER INFO >&2
  exit 1
}

log "starting a 1-shard and a 3-shard Redis Cluster"
cluster shards1 1; PORTS_1=("${CLUSTER_PORTS[@]}"); RPIDS_1=("${CLUSTER_PIDS[@]}")
cluster shards3 3; PORTS_3=("${CLUSTER_PORTS[@]}"); RPIDS_3=("${CLUSTER_PIDS[@]}")
# use SHARDS: sets PORTS, RPIDS and SEEDS to that cluster's.
use() {
  if [ "$1" = 1 ]; then PORTS=("${PORTS_1[@]}"); RPIDS=("${RPIDS_1[@]}")
  else PORTS=("${PORTS_3[@]}"); RPIDS=("${RPIDS_3[@]}"); fi
  SEEDS=$(printf '127.0.0.1:%s,' "${PORTS[@]}"); SEEDS=${SEEDS%,}
}

# --- sessionhub nodes ----------------------------------------------------------------------
# nodes SHARDS: three nodes on that cluster; their addresses in ADDRS, pids in NODE_PIDS.
# Each start has logs of its own (node-<start>-s<shards>-<i>.log).
STARTS=0
nodes() {
  local shards=$1 i
  use "$shards"
  ADDRS=(); NODE_PIDS=(); STARTS=$((STARTS + 1))
  for i in 1 2 3; do
    free_port
    start "node-$STARTS-s$shards-$i" "$PORT" "$SESSIONHUB" serve --listen "127.0.0.1:$PORT" \
      --node-id "node-$i" --data-dir "$SCRATCH/data-$i" --redis-cluster "$SEEDS" "${SH_FLAGS[@]}"
    ADDRS+=("127.0.0.1:$PORT"); NODE_PIDS+=("$PID")
  done
}
# Stops the nodes (their logs are checked for errors), empties the cluster in use.
stop_nodes() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  local keep=()
  for pid in "${PIDS[@]}"; do [[ " ${NODE_PIDS[*]} " == *" $pid "* ]] || keep+=("$pid"); done
  PIDS=("${keep[@]}"); NODE_PIDS=()
  for p in "${PORTS[@]}"; do redis-cli -p "$p" FLUSHALL >/dev/null; done
}

ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# counters FILE: for each primary in use, "port commands read-syscalls write-syscalls
# wake-ups": commands processed (INFO), read and write system calls (/proc/PID/io) and
# voluntary context switches (/proc/PID/status; each is a sleep in epoll_wait that ended).
# Taken before and after a run, they tell how many commands one wake-up of Redis served.
counters() {
  local out=$1 i=0 pid
  : >"$out"
  for pid in "${RPIDS[@]}"; do
    echo "${PORTS[$i]}" \
      "$(redis-cli -p "${PORTS[$i]}" INFO stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }')" \
      "$(awk '$1 == "syscr:" { r = $2 } $1 == "syscw:" { w = $2 } END { print r, w }' "/proc/$pid/io")" \
      "$(awk '$1 == "voluntary_ctxt_switches:" { print $2 }' "/proc/$pid/status")" >>"$out"
    i=$((i + 1))
  done
}

# subscriptions FILE: for each primary in use, every client with ssub > 0 and which
# process holds its other end (ss), as "port addr ssub pid" lines.
subscriptions() {
  local out=$1 p sockets line addr ssub pid
  sockets=$(ss -Htnp state established 2>/dev/null || true)
  : >"$out"
  for p in "${PORTS[@]}"; do
    redis-cli -p "$p" CLIENT LIST | tr -d '\r' | while read -r line; do
      addr=$(grep -o ' addr=[^ ]*' <<<"$line" | cut -d= -f2)
      ssub=$(grep -o ' ssub=[0-9]*' <<<"$line" | cut -d= -f2)
      [ "${ssub:-0}" -gt 0 ] || continue
      # Both ends: an ephemeral port may be in use towards another address too.
      pid=$(awk -v a="$addr" -v b="127.0.0.1:$p" \
        '$3 == a && $4 == b { if (match($0, /pid=[0-9]+/)) print substr($0, RSTART + 4, RLENGTH - 4) }' \
        <<<"$sockets" | head -1)
      echo "$p $addr $ssub ${pid:-?}"
    done >>"$out"
  done
}

# fixed SHARDS ROUND: one run at the fixed load; the subscriptions are counted mid-run.
fixed() {
  local shards=$1 round=$2 name="fixed-s$1-r$2" args=() a
  nodes "$shards"
  for a in "${ADDRS[@]}"; do args+=(--node "$a"); done
  for a in "${NODE_PIDS[@]}"; do args+=(--pid "$a"); done
  for a in "${RPIDS[@]}"; do args+=(--redis-pid "$a"); done
  counters "$RAW/$name.before"
  "$LOADGEN" fanout --label "shards-$shards" "${FAN[@]}" --rate "$RATE" --duration "$DURATION" \
    "${args[@]}" --out "$RAW/$name.json" >/dev/null 2>"$LOGS/$name.log" &
  local lg=$!
  for _ in $(seq 1 600); do grep -q 'connected in' "$LOGS/$name.log" && break; sleep 0.1; done
  sleep 2
  subscriptions "$RAW/$name.ssub"
  wait "$lg" || log "FAILED: $name (continuing)"
  counters "$RAW/$name.after"
  grep -h 'step 1:' "$LOGS/$name.log" | sed 's/^/    /' >&2 || true
  printf '%s\n' "${NODE_PIDS[@]}" >"$RAW/$name.nodes"
  printf '%s\n' "${PORTS[@]}" >"$RAW/$name.primaries"
  stop_nodes
}

# idle SHARDS: CPU of each primary with three nodes connected and nothing to do (their
# probes, the cluster bus, cron): the part of a run's Redis CPU that is not the load.
idle() {
  local shards=$1 before=() pid i=0
  nodes "$shards"
  sleep 2
  for pid in "${RPIDS[@]}"; do before+=("$(ticks "$pid")"); done
  sleep "$IDLE_SECS"
  : >"$RAW/idle-s$shards.txt"
  for pid in "${RPIDS[@]}"; do
    echo "${PORTS[$i]} $(( $(ticks "$pid") - before[i] )) $IDLE_SECS" >>"$RAW/idle-s$shards.txt"
    i=$((i + 1))
  done
  stop_nodes
}

search() {
  local shards=$1 args=() a
  nodes "$shards"
  for a in "${ADDRS[@]}"; do args+=(--node "$a"); done
  for a in "${NODE_PIDS[@]}"; do args+=(--pid "$a"); done
  for a in "${RPIDS[@]}"; do args+=(--redis-pid "$a"); done
  "$LOADGEN" fanout --label "shards-$shards" "${FAN[@]}" --search "${SEARCH[@]}" "${args[@]}" \
    --out "$RAW/search-s$shards.json" >/dev/null 2>"$LOGS/search-s$shards.log" \
    || log "FAILED: search on $shards shard(s) (continuing)"
  grep -h 'step ' "$LOGS/search-s$shards.log" | sed 's/^/    /' >&2 || true
  stop_nodes
}

# --- runs ----------------------------------------------------------------------------------
log "idle CPU of each primary (${IDLE_SECS} s, 3 nodes connected)"
idle 1; idle 3
# Alternating, and each round in the other order than the one before, so that a drift of
# the machine's speed or of foreign load lands on both setups alike.
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order=(1 3); else order=(3 1); fi
  for shards in "${order[@]}"; do
    log "fixed load ${RATE} pushes/s, $shards shard(s), round $round of $ROUNDS"
    fixed "$shards" "$round"
  done
done
for shards in 1 3; do
  log "rate search, $shards shard(s)"
  search "$shards"
done
# Warnings, errors and panics the nodes logged, for the report.
sed 's/\x1b\[[0-9;]*m//g' "$LOGS"/node-*.log | grep -E ' (WARN|ERROR) |panicked' >"$RAW/node-errors.txt" || true

# --- report --------------------------------------------------------------------------------
NAME=$(date -u +%Y-%m-%d); [ $QUICK = 1 ] && NAME="$NAME-quick"
[ -e "bench/results/$NAME-shards.json" ] && NAME="$NAME-$(date -u +%H%M)"
NAME="$NAME-shards"
mkdir -p bench/results
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- crates 2>/dev/null || commit="$commit+uncommitted"
[ -n "${SESSIONHUB_BIN:-}" ] && commit="${SESSIONHUB_REV:-prebuilt $SESSIONHUB_BIN}"
python3 - "$RAW" "bench/results/$NAME" \
  "date=$(date -u +%Y-%m-%dT%H:%MZ)" "quick=$QUICK" "sessionhub=$commit" \
  "rust_worker_threads=${THREADS:-default}" "redis=$(redis-server --version | grep -o 'v=[^ ]*')" \
  "rate=$RATE" "clients=$CLIENTS" "duration=$DURATION" "rounds=$ROUNDS" "idle_secs=$IDLE_SECS" \
  "search=${SEARCH[*]}" "publish=http, 128 in flight" <<'PY'
# The report of scripts/bench-shards.sh: raw results in, <name>.json and <name>.md out.
import glob, json, os, re, statistics, sys

raw, out = sys.argv[1], sys.argv[2]
notes = dict(a.split("=", 1) for a in sys.argv[3:])


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if x is not None]
    return [min(xs), max(xs)] if xs else None


def summary(xs):
    return {"median": med(xs), "min_max": spread(xs), "values": xs}


def step_row(st):
    per = st.get("cpu_per_100k") or {}
    secs = st.get("cpu_seconds") or {}
    wall = secs.get("wall") or 0
    d = st["delivery"]
    return {
        "rate": st["rate"],
        "publish_rate": st["publish_rate"],
        "published": st["published"],
        "delivered_per_sec": st["delivered_per_sec"],
        "p50_ms": st["latency"]["p50_ms"],
        "p99_ms": st["latency"]["p99_ms"],
        "p999_ms": st["latency"]["p999_ms"],
        "delivered": d["delivered"],
        "lost": d["lost"],
        "duplicated": d["duplicated"],
        "misrouted": d["misrouted"],
        "publish_errors": st["publish_errors"],
        "disconnects": st["disconnects"],
        "pass": st["pass"],
        "cpu_percent": dict(st["cpu"], redis_each=[s / wall * 100 for s in secs.get("redis_each", [])] if wall else []),
        "cpu_seconds": secs,
        "cpu_seconds_per_100k_deliveries": per,
    }


# --- fixed-load runs ---------------------------------------------------------------------
runs = []
for path in sorted(glob.glob(f"{raw}/fixed-s*-r*.json")):
    m = re.search(r"fixed-s(\d+)-r(\d+)\.json$", path)
    shards, rnd = int(m[1]), int(m[2])
    base = path[: -len(".json")]
    rep = json.load(open(path))
    row = step_row(rep["steps"][0])
    primaries = read(base + ".primaries").split()
    nodes = read(base + ".nodes").split()
    subs = [l.split() for l in read(base + ".ssub").splitlines() if len(l.split()) == 4]
    per_primary = []
    for port in primaries:
        mine = [s for s in subs if s[0] == port]
        pids = [s[3] for s in mine]
        per_primary.append({
            "primary": int(port),
            "ssub_connections": len(mine),
            "channels": sum(int(s[2]) for s in mine),
            "node_pids": pids,
            "one_per_node": sorted(pids) == sorted(nodes),
        })
    # Redis's own counters over the whole run (connecting included): commands, system calls
    # and wake-ups of each primary.
    before = {l.split()[0]: l.split() for l in read(base + ".before").splitlines() if len(l.split()) == 5}
    after = {l.split()[0]: l.split() for l in read(base + ".after").splitlines() if len(l.split()) == 5}
    counts = []
    for port in primaries:
        if port in before and port in after:
            d = [int(a) - int(b) for a, b in zip(after[port][1:], before[port][1:])]
            counts.append({"primary": int(port), "commands": d[0], "read_syscalls": d[1],
                           "write_syscalls": d[2], "wakeups": d[3]})
    row.update(shards=shards, round=rnd, subscriptions=per_primary, redis_counters=counts)
    runs.append(row)


def of(shards):
    return sorted((r for r in runs if r["shards"] == shards), key=lambda r: r["round"])


def p100k(r, key):
    return (r["cpu_seconds_per_100k_deliveries"] or {}).get(key)


setups = {}
for shards in (1, 3):
    rs = of(shards)
    if not rs:
        continue
    each = list(zip(*[p100k(r, "redis_each") for r in rs]))
    setups[str(shards)] = {
        "runs": len(rs),
        "delivered_per_sec": summary([r["delivered_per_sec"] for r in rs]),
        "p50_ms": summary([r["p50_ms"] for r in rs]),
        "p99_ms": summary([r["p99_ms"] for r in rs]),
        "lost": sum(r["lost"] for r in rs),
        "duplicated": sum(r["duplicated"] for r in rs),
        "misrouted": sum(r["misrouted"] for r in rs),
        "publish_errors": sum(r["publish_errors"] for r in rs),
        "disconnects": sum(r["disconnects"] for r in rs),
        "node_cpu_s_per_100k": summary([p100k(r, "server") for r in rs]),
        "redis_cpu_s_per_100k": summary([p100k(r, "redis") for r in rs]),
        "redis_cpu_s_per_100k_each": [summary(list(e)) for e in each],
        "loadgen_cpu_s_per_100k": summary([p100k(r, "loadgen") for r in rs]),
        "redis_cpu_percent_each": [summary(list(e)) for e in zip(*[r["cpu_percent"]["redis_each"] for r in rs])],
        "other_cpu_percent": summary([r["cpu_percent"]["other"] for r in rs]),
        # Per push published, every primary together; the counters also span the connecting
        # (1000 SSUBSCRIBE and the like, a few % of a run's commands).
        "redis_wakeups_per_push": summary([
            sum(c["wakeups"] for c in r["redis_counters"]) / r["published"]
            for r in rs if r.get("redis_counters") and r["published"]]),
        "redis_syscalls_per_push": summary([
            sum(c["read_syscalls"] + c["write_syscalls"] for c in r["redis_counters"]) / r["published"]
            for r in rs if r.get("redis_counters") and r["published"]]),
        "redis_commands_per_push": summary([
            sum(c["commands"] for c in r["redis_counters"]) / r["published"]
            for r in rs if r.get("redis_counters") and r["published"]]),
        "ssub_connections_per_primary": sorted({s["ssub_connections"] for r in rs for s in r["subscriptions"]}),
        "one_subscription_connection_per_node_and_primary": all(
            s["one_per_node"] for r in rs for s in r["subscriptions"]) and all(r["subscriptions"] for r in rs),
    }

# Each shard's Redis CPU as a share of the 1-shard Redis CPU, per 100k deliveries, paired
# round by round (the two runs of a round are next to each other in time).
shares = []
for r3 in of(3):
    r1 = next((r for r in of(1) if r["round"] == r3["round"]), None)
    one = r1 and p100k(r1, "redis")
    if not one:
        continue
    each = [e / one for e in p100k(r3, "redis_each")]
    shares.append({"round": r3["round"], "each": each, "max": max(each), "total": sum(each)})

# Idle CPU of each primary (three nodes connected, no load), percent of a core.
idle = {}
for shards in (1, 3):
    rows = [l.split() for l in read(f"{raw}/idle-s{shards}.txt").splitlines() if l.strip()]
    idle[str(shards)] = [{"primary": int(p), "cpu_percent": int(t) / float(s)} for p, t, s in rows]

# Idle-corrected shares: each run's Redis CPU less what the primaries burn with no load.
def less_idle(r, shards):
    secs = r["cpu_seconds"]
    rates = [i["cpu_percent"] / 100 for i in idle.get(str(shards), [])]
    if len(rates) != len(secs.get("redis_each", [])):
        return None
    return [max(s - rate * secs["wall"], 0.0) for s, rate in zip(secs["redis_each"], rates)]

shares_less_idle = []
for r3 in of(3):
    r1 = next((r for r in of(1) if r["round"] == r3["round"]), None)
    if not r1:
        continue
    a, b = less_idle(r3, 3), less_idle(r1, 1)
    if not a or not b or not b[0] or not r1["delivered"] or not r3["delivered"]:
        continue
    # Per delivery, so that a run that delivered a little more is not charged for it.
    one = b[0] / r1["delivered"]
    each = [x / r3["delivered"] / one for x in a]
    shares_less_idle.append({"round": r3["round"], "each": each, "max": max(each), "total": sum(each)})

# --- searches ----------------------------------------------------------------------------
searches = {}
for shards in (1, 3):
    path = f"{raw}/search-s{shards}.json"
    if not os.path.exists(path):
        continue
    rep = json.load(open(path))
    steps = [step_row(s) for s in rep["steps"]]
    best = step_row(rep["best"]) if rep.get("best") else None
    searches[str(shards)] = {
        "best": best,
        "peak_delivered_per_sec": max((s["delivered_per_sec"] for s in steps), default=None),
        "steps": steps,
    }

# What the nodes warned about, each distinct message (timestamps and colours removed) counted.
node_errors = {}
for line in read(f"{raw}/node-errors.txt").splitlines():
    line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
    line = re.sub(r"^\S+Z\s+", "", line)
    if line:
        node_errors[line] = node_errors.get(line, 0) + 1

# --- the issue's targets -----------------------------------------------------------------
checks = []
if shares:
    worst = med([s["max"] for s in shares])
    checks.append({
        "target": "at the same offered load, each of 3 shards uses <= 40% of the Redis CPU that one shard needs",
        "measured": f"busiest shard {worst:.0%} of the 1-shard figure (median of {len(shares)} paired rounds, "
                    f"{min(s['max'] for s in shares):.0%}-{max(s['max'] for s in shares):.0%}); all three together "
                    f"{med([s['total'] for s in shares]):.0%}",
        "met": worst <= 0.40,
    })
subs_ok = [setups[k]["one_subscription_connection_per_node_and_primary"] for k in setups]
if subs_ok:
    checks.append({
        "target": "a node holds one sharded subscription connection per shard",
        "measured": "; ".join(
            f"{k} shard(s): {setups[k]['ssub_connections_per_primary']} connections with ssub > 0 per primary, "
            f"{'one from each node' if setups[k]['one_subscription_connection_per_node_and_primary'] else 'NOT one from each node'}"
            for k in setups),
        "met": all(subs_ok),
    })
if "1" in searches and "3" in searches and not (searches["1"]["best"] and searches["3"]["best"]):
    checks.append({
        "target": "fan-out delivered/s grows with shards (1 vs 3)",
        "measured": "no search result to compare: " + "; ".join(
            f"{k} shard(s): " + (f"best {s['best']['delivered_per_sec']:.0f} delivered/s" if s["best"]
                                 else f"no passing step (peak {s['peak_delivered_per_sec']:.0f} delivered/s)")
            for k, s in searches.items()),
        "met": None,
    })
elif "1" in searches and "3" in searches:
    b1, b3 = searches["1"]["best"], searches["3"]["best"]
    redis1 = b1["cpu_percent"]["redis"]
    ratio = b3["delivered_per_sec"] / b1["delivered_per_sec"]
    # Throughput can only grow with shards where Redis is what stops it.
    bound = redis1 >= 80
    checks.append({
        "target": "fan-out delivered/s grows with shards (1 vs 3)",
        "measured": f"best {b1['delivered_per_sec']:.0f} vs {b3['delivered_per_sec']:.0f} delivered/s ({ratio:.2f}x); "
                    f"the 1-shard primary used {redis1:.0f}% of a core at its best step, "
                    f"the machine {sum(b1['cpu_percent'][k] for k in ('server', 'redis', 'loadgen', 'other')):.0f}% of 200%",
        "met": (ratio > 1.15) if bound else None,
    })

results = {
    "notes": notes,
    "machine": {
        "cpus": os.cpu_count(),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines()
                           if l.startswith("model name")), ""),
        "kernel": read("/proc/sys/kernel/osrelease").strip(),
    },
    "setups": setups,
    "shard_share_of_one_shard_redis_cpu": {
        "paired_rounds": shares,
        "busiest_shard": summary([s["max"] for s in shares]),
        "all_shards_together": summary([s["total"] for s in shares]),
        "less_idle_paired_rounds": shares_less_idle,
        "less_idle_busiest_shard": summary([s["max"] for s in shares_less_idle]),
    },
    "idle_redis_cpu_percent": idle,
    "fixed_runs": runs,
    "searches": searches,
    "node_log_warnings": node_errors,
    "checks": checks,
}
with open(out + ".json", "w") as f:
    json.dump(results, f, indent=2)

# --- markdown ----------------------------------------------------------------------------
def ms(s, fmt="{:.2f}"):
    if not s or s["median"] is None:
        return "-"
    lo, hi = s["min_max"]
    return f"{fmt.format(s['median'])} ({fmt.format(lo)}-{fmt.format(hi)})"


md = []
md.append(f"# Fan-out on a Redis Cluster: 1 shard vs 3 ({notes.get('date', '')})\n")
md.append(f"`scripts/bench-shards.sh{' --quick' if notes.get('quick') == '1' else ''}`, sessionhub {notes.get('sessionhub')}, "
          f"Redis {notes.get('redis', '')}, {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']}), "
          f"node worker threads {notes.get('rust_worker_threads')}. Three sessionhub nodes with `--redis-cluster`, "
          f"{notes.get('clients')} clients, 2 per user, HTTP push (128 in flight); primaries only.\n")
md.append(f"## Fixed load: {notes.get('rate')} pushes/s for {notes.get('duration')} s, {notes.get('rounds')} rounds alternating\n")
md.append("Median (min-max) over the rounds. CPU in CPU-seconds per 100 000 deliveries (= µs per delivery x 0.1).\n")
md.append("| shards | delivered/s | p50 ms | p99 ms | lost / dup / errors | node CPU s /100k | Redis CPU s /100k (all) | Redis CPU s /100k each primary | loadgen CPU s /100k | other CPU % | ssub connections per primary |")
md.append("|---|---|---|---|---|---|---|---|---|---|---|")
for k, s in setups.items():
    each = ", ".join(ms(e, "{:.3f}") for e in s["redis_cpu_s_per_100k_each"])
    md.append(f"| {k} | {ms(s['delivered_per_sec'], '{:.0f}')} | {ms(s['p50_ms'])} | {ms(s['p99_ms'])} | "
              f"{s['lost']} / {s['duplicated']} / {s['publish_errors']} | {ms(s['node_cpu_s_per_100k'], '{:.3f}')} | "
              f"{ms(s['redis_cpu_s_per_100k'], '{:.3f}')} | {each} | {ms(s['loadgen_cpu_s_per_100k'], '{:.3f}')} | "
              f"{ms(s['other_cpu_percent'], '{:.0f}')} | {s['ssub_connections_per_primary']}"
              f"{' (one per node)' if s['one_subscription_connection_per_node_and_primary'] else ' (NOT one per node)'} |")
sh = results["shard_share_of_one_shard_redis_cpu"]
md.append("")
if shares:
    md.append("Each 3-shard primary's Redis CPU per delivery as a share of the 1-shard primary's, paired by round:\n")
    md.append("| round | shard shares | busiest | all three together |")
    md.append("|---|---|---|---|")
    for s in shares:
        md.append(f"| {s['round']} | {', '.join(f'{x:.0%}' for x in s['each'])} | {s['max']:.0%} | {s['total']:.0%} |")
    md.append(f"| **median (min-max)** | | **{ms(sh['busiest_shard'], '{:.2f}')}** | {ms(sh['all_shards_together'], '{:.2f}')} |")
    md.append("")
if any(s["redis_wakeups_per_push"]["values"] for s in setups.values()):
    md.append("Redis's own counters per push published, all primaries together (connecting included): "
              + "; ".join(f"{k} shard(s): {ms(s['redis_wakeups_per_push'], '{:.2f}')} wake-ups (ended sleeps in "
                          f"epoll_wait), {ms(s['redis_syscalls_per_push'], '{:.2f}')} read+write system calls, "
                          f"{ms(s['redis_commands_per_push'], '{:.1f}')} commands (those inside scripts included)"
                          for k, s in setups.items() if s["redis_wakeups_per_push"]["values"]) + ".\n")
if shares_less_idle:
    md.append(f"Less each primary's idle CPU (below): busiest shard {ms(sh['less_idle_busiest_shard'], '{:.2f}')} of the 1-shard figure.\n")
md.append("Idle CPU of each primary, three nodes connected and no load: " + "; ".join(
    f"{k} shard(s): " + ", ".join(f"{i['cpu_percent']:.1f} %" for i in v) for k, v in idle.items()) + ".\n")
md.append("Every run:\n")
md.append("| shards | round | delivered/s | p50 / p99 ms | lost | CPU % node / Redis (each) / loadgen / other | CPU s /100k node / Redis (each) | ssub connections (channels) per primary |")
md.append("|---|---|---|---|---|---|---|---|")
for r in sorted(runs, key=lambda r: (r["round"], r["shards"])):
    c, p = r["cpu_percent"], r["cpu_seconds_per_100k_deliveries"] or {}
    each_pct = "+".join(f"{x:.0f}" for x in c["redis_each"])
    each_p = "+".join(f"{x:.3f}" for x in p.get("redis_each", []))
    subs = ", ".join(f"{s['ssub_connections']} ({s['channels']})" for s in r["subscriptions"])
    md.append(f"| {r['shards']} | {r['round']} | {r['delivered_per_sec']:.0f} | {r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['lost']} | "
              f"{c['server']:.0f} / {c['redis']:.0f} ({each_pct}) / {c['loadgen']:.0f} / {c['other']:.0f} | "
              f"{p.get('server', 0):.3f} / {p.get('redis', 0):.3f} ({each_p}) | {subs} |")
md.append("")
if searches:
    md.append(f"## Rate search (`{notes.get('search')}`, p99 < 50 ms, loss <= 0.1 %)\n")
    md.append("| shards | best delivered/s | peak delivered/s | p50 / p99 ms | CPU % node / Redis (each) / loadgen / other at best | CPU s /100k node / Redis at best |")
    md.append("|---|---|---|---|---|---|")
    for k, s in searches.items():
        b = s["best"]
        if not b:
            md.append(f"| {k} | no passing step | {s['peak_delivered_per_sec']:.0f} | | | |")
            continue
        c, p = b["cpu_percent"], b["cpu_seconds_per_100k_deliveries"] or {}
        md.append(f"| {k} | {b['delivered_per_sec']:.0f} | {s['peak_delivered_per_sec']:.0f} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} | "
                  f"{c['server']:.0f} / {c['redis']:.0f} ({'+'.join(f'{x:.0f}' for x in c['redis_each'])}) / {c['loadgen']:.0f} / {c['other']:.0f} | "
                  f"{p.get('server', 0):.3f} / {p.get('redis', 0):.3f} |")
    md.append("")
    for k, s in searches.items():
        md.append(f"Steps, {k} shard(s): " + "; ".join(
            f"{st['rate']:.0f}/s -> {st['delivered_per_sec']:.0f} delivered/s, p99 {st['p99_ms']:.1f} ms, "
            f"lost {st['lost']}, Redis {st['cpu_percent']['redis']:.0f} %, {'pass' if st['pass'] else 'FAIL'}"
            for st in s["steps"]) + ".\n")
md.append("## Targets\n")
md.append("| target | measured | met? |")
md.append("|---|---|---|")
for c in checks:
    met = {True: "**yes**", False: "**no**", None: "not measurable here"}[c["met"]]
    md.append(f"| {c['target']} | {c['measured']} | {met} |")
md.append("")
if node_errors:
    md.append("Node logs, WARN / ERROR / panic lines (count, message):\n")
    md.extend(f"- {n} x `{m[:300]}`" for m, n in sorted(node_errors.items(), key=lambda e: -e[1]))
    md.append("")
else:
    md.append("Node logs: no WARN, ERROR or panic line.\n")
with open(out + ".md", "w") as f:
    f.write("\n".join(md))
print(f"wrote {out}.json and {out}.md", file=sys.stderr)
PY
log "done: bench/results/$NAME.json and .md"
