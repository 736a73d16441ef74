"""Summarises a scripts/bench-pusher.sh run: per topology and fan-out, the median (and
spread) over rounds of each target's node and Redis CPU seconds per 100 000 deliveries,
p50/p99, and delivery faults; the ratios sessionhub / Sockudo, of the nodes alone and of
nodes plus Redis; idle memory per connection; the three-node delivery checks.

Usage: pusher_summary.py RAW_DIR OUT_PREFIX SESSIONHUB_VERSION SOCKUDO_VERSION DURATION
Writes OUT_PREFIX.json and OUT_PREFIX.md.
"""

import json
import statistics
import sys
from pathlib import Path

TARGETS = ("sessionhub", "sockudo")


def spread(values):
    """median, min, max of values (None if there are none)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    raw, out, sh_version, sockudo_version, duration = sys.argv[1:6]
    runs = {}
    for path in sorted(Path(raw).glob("fanout-*.json")):
        target, topo, fan, _round = path.stem.removeprefix("fanout-").rsplit("-", 3)
        step = json.loads(path.read_text())["steps"][0]
        per = step.get("cpu_per_100k") or {}
        node_cpu, redis_cpu = per.get("server"), per.get("redis") if int(topo) == 3 else None
        entry = runs.setdefault((int(topo), int(fan)), {}).setdefault(target, [])
        entry.append(
            {
                "node_cpu": node_cpu,
                "redis_cpu": redis_cpu,
                # What a cluster costs: its nodes and the Redis they share.
                "total_cpu": node_cpu + redis_cpu
                if node_cpu is not None and redis_cpu is not None
                else None,
                "p50_ms": step["latency"]["p50_ms"],
                "p99_ms": step["latency"]["p99_ms"],
                "expected": step["delivery"]["expected"],
                "lost": step["delivery"]["lost"],
                "duplicated": step["delivery"]["duplicated"],
                "reordered": step["delivery"].get("reordered", 0),
                "rate": step["rate"],
                "delivered_per_sec": step["delivered_per_sec"],
            }
        )
    summary = []
    for (topo, fan), by_target in sorted(runs.items()):
        row = {"nodes": topo, "fanout": fan}
        for target in TARGETS:
            rounds = by_target.get(target, [])
            pick = lambda key: [r[key] for r in rounds if r[key] is not None]
            row[target] = {
                "rounds": len(rounds),
                "node_cpu_per_100k": spread(pick("node_cpu")),
                "redis_cpu_per_100k": spread(pick("redis_cpu")),
                "node_and_redis_cpu_per_100k": spread(pick("total_cpu")),
                "p50_ms": spread(pick("p50_ms")),
                "p99_ms": spread(pick("p99_ms")),
                "expected": sum(pick("expected")),
                "lost": sum(pick("lost")),
                "duplicated": sum(pick("duplicated")),
                "reordered": sum(pick("reordered")),
                "deliveries_per_sec": spread(pick("delivered_per_sec")),
            }
        sh, so = row["sessionhub"], row["sockudo"]
        for key in (
            "node_cpu_per_100k",
            "redis_cpu_per_100k",
            "node_and_redis_cpu_per_100k",
            "p99_ms",
        ):
            if sh[key] and so[key] and so[key]["median"]:
                row[f"ratio_{key}"] = sh[key]["median"] / so[key]["median"]
        summary.append(row)
    memory = {}
    for path in sorted(Path(raw).glob("connections-*.json")):
        report = json.loads(path.read_text())
        memory[report["label"]] = {
            "opened": report["opened"],
            "failed": report["failed"],
            "kib_per_conn": report["kib_per_conn"],
            "rss_before_kib": report["rss_before_kib"],
            "rss_after_kib": report["rss_after_kib"],
            "idle_cpu_percent": report["idle_cpu_percent"],
            "disconnects": report["disconnects"],
        }
    checks = {}
    for path in sorted(Path(raw).glob("check-*.json")):
        report = json.loads(path.read_text())
        checks[report["label"]] = report["steps"][0]["delivery"]
    result = {
        "sessionhub": sh_version,
        "sockudo": sockudo_version,
        "duration_secs": float(duration),
        "fanout": summary,
        "idle_memory": memory,
        "three_node_check": checks,
    }
    Path(out + ".json").write_text(json.dumps(result, indent=2) + "\n")

    def cell(stat, digits=3):
        if not stat:
            return "-"
        return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"

    lines = [
        f"# Pusher protocol: {sh_version} vs {sockudo_version}",
        "",
        "CPU seconds per 100 000 deliveries (median, min-max over rounds); latency in ms;",
        "faults summed over rounds. Ratio: sessionhub / Sockudo (below 1: sessionhub cheaper), of",
        "the nodes' CPU and, on three nodes, of the nodes' and Redis's together.",
        "",
        "| nodes | fan-out | deliveries/s | node CPU sessionhub | node CPU Sockudo | ratio "
        "| Redis CPU sessionhub | Redis CPU Sockudo | ratio with Redis "
        "| p99 sessionhub | p99 Sockudo "
        "| lost/dup/reordered sessionhub | lost/dup/reordered Sockudo |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        sh, so = row["sessionhub"], row["sockudo"]
        ratio_text, with_redis_text = (
            f"{row[key]:.2f}" if key in row else "-"
            for key in ("ratio_node_cpu_per_100k", "ratio_node_and_redis_cpu_per_100k")
        )
        lines.append(
            f"| {row['nodes']} | {row['fanout']} | {cell(sh['deliveries_per_sec'], 0)} "
            f"| {cell(sh['node_cpu_per_100k'])} | {cell(so['node_cpu_per_100k'])} "
            f"| {ratio_text} | {cell(sh['redis_cpu_per_100k'])} "
            f"| {cell(so['redis_cpu_per_100k'])} | {with_redis_text} "
            f"| {cell(sh['p99_ms'], 1)} | {cell(so['p99_ms'], 1)} "
            f"| {sh['lost']}/{sh['duplicated']}/{sh['reordered']} of {sh['expected']} "
            f"| {so['lost']}/{so['duplicated']}/{so['reordered']} of {so['expected']} |"
        )
    lines += [
        "",
        "Idle connections, each subscribed to a channel of its own, on one node (nodes 1: alone;",
        "nodes 3: with the cluster's Redis adapter or bus). KiB per connection: resident memory",
        "growth over the ramp / connections opened.",
        "",
        "| target | nodes | opened (failed) | KiB per connection | idle CPU % |",
        "|---|---|---|---|---|",
    ]
    for label, m in memory.items():
        target, _, nodes = label.rpartition("-")
        lines.append(
            f"| {target or label} | {nodes if target else '-'} | {m['opened']} ({m['failed']}) "
            f"| {m['kib_per_conn']:.2f} | {m['idle_cpu_percent']:.1f} |"
        )
    if checks:
        lines += ["", "Three-node check (one user, a connection on each node, publishes over every node):", ""]
        for label, d in checks.items():
            lines.append(
                f"- {label}: {d['delivered']} of {d['expected']} delivered, {d['lost']} lost, "
                f"{d['duplicated']} duplicated"
            )
    Path(out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
