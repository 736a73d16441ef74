# Shared by the bench scripts (sourced, not run): free ports, and background processes that
# are waited for until they listen. The caller sets LOGS (a directory), PIDS (an array) and
# NEXT_PORT (where the search for free ports starts, below the ephemeral range 32768+, so
# client sockets never take one first). With BUS_OFFSET set, a port is free only if
# port + BUS_OFFSET is too (a Redis Cluster node's bus).

is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Leaves the next free port in $PORT.
free_port() {
  while ! is_free "$NEXT_PORT" || { [ -n "${BUS_OFFSET:-}" ] && ! is_free $((NEXT_PORT + BUS_OFFSET)); }; do
    NEXT_PORT=$((NEXT_PORT + 1))
  done
  PORT=$NEXT_PORT
  NEXT_PORT=$((NEXT_PORT + 1))
}

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name did not listen on $port; log:" >&2
  tail -20 "$LOGS/$name.log" >&2
  exit 1
}

# start NAME PORT CMD...: runs CMD in the background; PID is left in $PID.
start() {
  local name=$1 port=$2; shift 2
  "$@" >"$LOGS/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  wait_port "$port" "$name"
}
