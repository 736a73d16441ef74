#!/usr/bin/env bash
# CI gate on the node's instruction counts (issue #18): fails when the user-space
# instructions per session request or per delivery rise more than CG_GATE_PERCENT (15) over
# the baseline checked in at bench/callgrind-baseline.txt. Instruction counts under
# callgrind are repeatable on a noisy shared machine, where CPU seconds are not
# (scripts/callgrind.sh says how they are taken: one pair of runs here, ~3 minutes).
#
# Updating the baseline is a deliberate commit with a reason: run
#   scripts/callgrind-gate.sh --update "why the cost changed"
# which measures, rewrites the file (keeping the reason and commit) and fails nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

BASELINE=bench/callgrind-baseline.txt
LIMIT=${CG_GATE_PERCENT:-15}
GATED=(session_request_ir delivery_ir)

cargo build --release --locked -q -p sessionhub-server -p sessionhub-loadgen
measured=$(CG_REPEAT=${CG_REPEAT:-1} CG_NOHISTORY=0 bash scripts/callgrind.sh)
echo "$measured"

value() { awk -v k="$1" '$1 == k { print $2 }' <<<"$2"; }

if [ "${1:-}" = --update ]; then
  reason=${2:?"--update needs a reason"}
  {
    echo "# Node user-space instructions (callgrind Ir), from scripts/callgrind-gate.sh --update."
    echo "# Checked by CI: a rise of more than ${LIMIT} % fails it. Change only with a reason."
    echo "# commit: $(git rev-parse --short HEAD)  date: $(date -u +%F)"
    echo "# reason: $reason"
    for name in "${GATED[@]}"; do echo "$name $(value "$name" "$measured")"; done
  } >"$BASELINE"
  echo "wrote $BASELINE"
  exit 0
fi

status=0
for name in "${GATED[@]}"; do
  base=$(value "$name" "$(grep -v '^#' "$BASELINE")")
  now=$(value "$name" "$measured")
  [ -n "$base" ] && [ -n "$now" ] || { echo "$name: missing (baseline '$base', measured '$now')" >&2; exit 2; }
  ratio=$(awk -v n="$now" -v b="$base" 'BEGIN { printf "%.3f", n / b }')
  if awk -v n="$now" -v b="$base" -v l="$LIMIT" 'BEGIN { exit !(n > b * (1 + l / 100)) }'; then
    echo "FAIL $name: $now instructions, ${ratio}x the baseline $base (more than +${LIMIT} %)" >&2
    status=1
  else
    echo "ok   $name: $now instructions, ${ratio}x the baseline $base"
  fi
done
[ $status = 0 ] || echo "if the rise is deliberate: scripts/callgrind-gate.sh --update \"<reason>\" and commit $BASELINE" >&2
exit $status
