# Shared by the bench scripts' --profile (sourced, not run): `perf record` on a target's
# nodes during one load, folded and drawn as a flame graph with inferno. The caller has
# sourced bench-setup.sh (SCRATCH, LOGS, log) and set PROFILE (the output directory).

# profile_tools: refuses to start without perf and inferno (cargo install inferno).
profile_tools() {
  local tool
  for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "--profile needs $tool on PATH" >&2; exit 2; }
  done
}

# profile_start NAME DELAY SECONDS PID...: samples PIDs for SECONDS after DELAY seconds
# (the clients connect first) in the background; PERF_PID is the sampler.
profile_start() {
  local name=$1 delay=$2 seconds=$3; shift 3
  (sleep "$delay"; exec perf record -F 499 --call-graph dwarf,16384 -o "$SCRATCH/perf-$name.data" \
    -p "$(IFS=,; echo "$*")" -- sleep "$seconds") >"$LOGS/perf-$name.log" 2>&1 &
  PERF_PID=$!
}

# profile_finish NAME TITLE: waits for the sampler, writes PROFILE/NAME.folded and
# PROFILE/flamegraph-NAME.svg.
profile_finish() {
  local name=$1 title=$2
  wait "$PERF_PID" || true
  perf script -i "$SCRATCH/perf-$name.data" 2>/dev/null | inferno-collapse-perf >"$PROFILE/$name.folded"
  inferno-flamegraph --minwidth 0.2 --title "$title" <"$PROFILE/$name.folded" \
    >"$PROFILE/flamegraph-$name.svg"
  log "profile: $PROFILE/flamegraph-$name.svg"
}
