# The report of scripts/bench-cost.sh: its raw results in, <name>.json and <name>.md out.
#   python3 scripts/lib/cost-report.py RAW_DIR OUT_STEM key=value...
# Medians and spreads of CPU per 100 000 units of work, per target and scenario, and
# sessionhub's ratios to each peer (of the medians, and paired round by round).
import glob, json, os, re, statistics, sys

raw, out = sys.argv[1], sys.argv[2]
notes = dict(a.split("=", 1) for a in sys.argv[3:])

# Which peers each sessionhub flavour is compared with, and the issue's ceiling on the ratio
# of node CPU per unit (None: reported, no target).
FANOUT_PEERS = {"socketioxide": 0.5, "socketio": 0.33}
SESSION_PEERS = {"tower-sessions": 0.33}
SESSION_REDIS_TARGET = 0.5


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summary(xs):
    xs = [x for x in xs if x is not None]
    return {"median": med(xs), "min": min(xs) if xs else None, "max": max(xs) if xs else None, "values": xs}


def load(path):
    with open(path) as f:
        return json.load(f)


# --- one row per measurement -------------------------------------------------------------
rows = []
for path in sorted(glob.glob(f"{raw}/fanout-*.json")):
    m = re.match(r"fanout-(.+)-f(\d+)-r(\d+)\.json$", os.path.basename(path))
    rep = load(path)
    if not rep.get("steps"):
        continue
    st = rep["steps"][0]
    per = st.get("cpu_per_100k") or {}
    d = st["delivery"]
    rows.append({
        "kind": "fanout", "target": m.group(1), "scenario": f"fan-out {m.group(2)}",
        "round": int(m.group(3)),
        "offered_per_sec": st["rate"] * int(m.group(2)),
        "done_per_sec": st["delivered_per_sec"],
        "publish_rate": st["publish_rate"], "rate": st["rate"],
        "server": per.get("server"), "redis": per.get("redis"), "loadgen": per.get("loadgen"),
        "p50_ms": st["latency"]["p50_ms"], "p99_ms": st["latency"]["p99_ms"],
        "lost": d["lost"], "duplicated": d["duplicated"], "errors": st["publish_errors"],
        "other_cpu_percent": st["cpu"]["other"],
        "on_schedule": st["publish_rate"] >= 0.95 * st["rate"],
    })
for path in sorted(glob.glob(f"{raw}/sessions-*.json")):
    m = re.match(r"sessions-(.+)-(get-session|read-session)-r(\d+)\.json$", os.path.basename(path))
    rep = load(path)
    per = rep.get("cpu_per_100k") or {}
    scenario = "session read+write" if m.group(2) == "get-session" else "session read-only"
    probe = rep.get("probe_write") if m.group(2) == "get-session" else rep.get("probe_read")
    rows.append({
        "kind": "sessions", "target": m.group(1), "scenario": scenario, "round": int(m.group(3)),
        "offered_per_sec": rep.get("rate"), "done_per_sec": rep["requests_per_sec"],
        "server": per.get("server"), "redis": per.get("redis"), "loadgen": per.get("loadgen"),
        "p50_ms": rep["latency"]["p50_ms"], "p99_ms": rep["latency"]["p99_ms"],
        "lost": 0, "duplicated": 0, "errors": rep["errors"] + rep["count_mismatches"],
        "other_cpu_percent": rep["cpu"]["other"],
        "round_trips": probe["round_trips_per_request"] if probe else None,
        "on_schedule": rep.get("rate") is None or rep["requests_per_sec"] >= 0.95 * rep["rate"],
    })

scenarios = []
for r in rows:
    if r["scenario"] not in scenarios:
        scenarios.append(r["scenario"])
scenarios.sort(key=lambda s: (s.startswith("session"), int(s.split()[-1]) if s.startswith("fan-out") else s))

table = {}
for s in scenarios:
    for t in sorted({r["target"] for r in rows if r["scenario"] == s}):
        rs = [r for r in rows if r["scenario"] == s and r["target"] == t]
        table.setdefault(s, {})[t] = {
            "rounds": len(rs),
            "offered_per_sec": rs[0]["offered_per_sec"],
            "done_per_sec": summary([r["done_per_sec"] for r in rs]),
            "server_cpu_s_per_100k": summary([r["server"] for r in rs]),
            "redis_cpu_s_per_100k": summary([r["redis"] for r in rs]),
            "loadgen_cpu_s_per_100k": summary([r["loadgen"] for r in rs]),
            "p50_ms": summary([r["p50_ms"] for r in rs]),
            "p99_ms": summary([r["p99_ms"] for r in rs]),
            "other_cpu_percent": summary([r["other_cpu_percent"] for r in rs]),
            "lost": sum(r["lost"] for r in rs), "duplicated": sum(r["duplicated"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "all_on_schedule": all(r["on_schedule"] for r in rs),
            "round_trips": next((r.get("round_trips") for r in rs if r.get("round_trips") is not None), None),
        }


ROW_FIELD = {"server_cpu_s_per_100k": "server", "redis_cpu_s_per_100k": "redis", "p99_ms": "p99_ms"}


def ratios(scenario, ours, theirs, key):
    """sessionhub / peer for `key`: of the medians, and paired by round."""
    a, b = table[scenario].get(ours), table[scenario].get(theirs)
    if not a or not b or not a[key]["median"] or not b[key]["median"]:
        return None
    field = ROW_FIELD[key]
    paired = []
    for r in rows:
        if r["scenario"] == scenario and r["target"] == ours and r[field]:
            o = next((x for x in rows if x["scenario"] == scenario and x["target"] == theirs
                      and x["round"] == r["round"] and x[field]), None)
            if o:
                paired.append(r[field] / o[field])
    return {"of_medians": a[key]["median"] / b[key]["median"], "paired": summary(paired)}


comparisons = []
for s in scenarios:
    peers = FANOUT_PEERS if s.startswith("fan-out") else SESSION_PEERS
    ours_all = [t for t in table[s] if t.startswith("sessionhub")]
    for ours in ours_all:
        for peer, ceiling in peers.items():
            if peer not in table[s]:
                continue
            node = ratios(s, ours, peer, "server_cpu_s_per_100k")
            redis = ratios(s, ours, peer, "redis_cpu_s_per_100k")
            p99 = ratios(s, ours, peer, "p99_ms")
            comparisons.append({
                "scenario": s, "ours": ours, "peer": peer, "node_cpu": node, "redis_cpu": redis,
                "p99": p99, "node_target": ceiling,
                "redis_target": SESSION_REDIS_TARGET if s.startswith("session") else None,
            })

results = {
    "notes": notes,
    "machine": {
        "cpus": os.cpu_count(),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
        "kernel": open("/proc/sys/kernel/osrelease").read().strip(),
    },
    "table": table,
    "comparisons": comparisons,
    "runs": rows,
}
with open(out + ".json", "w") as f:
    json.dump(results, f, indent=2)


# --- markdown ----------------------------------------------------------------------------
def ms(s, fmt="{:.2f}"):
    if not s or s["median"] is None:
        return "-"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def rt(r, fmt="{:.2f}"):
    if not r:
        return "-"
    p = r["paired"]
    paired = f" (paired {fmt.format(p['median'])}, {fmt.format(p['min'])}-{fmt.format(p['max'])})" if p["median"] else ""
    return f"{fmt.format(r['of_medians'])}x{paired}"


md = [f"# Cost per unit of work ({notes.get('date', '')})\n",
      f"`scripts/bench-cost.sh{' --quick' if notes.get('quick') == '1' else ''}`, sessionhub {notes.get('sessionhub')}, "
      f"Redis {notes.get('redis', '')}, Node {notes.get('node', '')}, {results['machine']['cpus']} CPUs "
      f"({results['machine']['cpu_model']}), Rust worker threads {notes.get('rust_worker_threads')}. "
      f"{notes.get('rounds')} rounds of {notes.get('duration')} s per measurement, targets in a different order each "
      f"round; median (min-max). Fan-out: 3 nodes on one Redis, {notes.get('clients')} clients, HTTP push "
      f"(fan-out 1 at {notes.get('f1_rate')} pushes/s; the others at {notes.get('fan_deliveries')} deliveries/s). "
      f"Sessions: 1 node, 64 virtual users, {notes.get('session_rate')} requests/s. CPU is utime + stime from "
      "/proc/PID/stat, in CPU-seconds per 100 000 deliveries or requests (1 s /100k = 10 µs each).\n",
      "| scenario | target | offered /s | done /s | node CPU s /100k | Redis CPU s /100k | p50 ms | p99 ms | lost / dup / errors | Redis round trips | other CPU % |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
for s in scenarios:
    for t, x in table[s].items():
        sched = "" if x["all_on_schedule"] else " (behind)"
        md.append(f"| {s} | {t} | {x['offered_per_sec'] or 0:.0f} | {ms(x['done_per_sec'], '{:.0f}')}{sched} | "
                  f"{ms(x['server_cpu_s_per_100k'], '{:.2f}')} | {ms(x['redis_cpu_s_per_100k'], '{:.2f}')} | "
                  f"{ms(x['p50_ms'])} | {ms(x['p99_ms'])} | {x['lost']} / {x['duplicated']} / {x['errors']} | "
                  f"{'-' if x['round_trips'] is None else format(x['round_trips'], '.2f')} | {ms(x['other_cpu_percent'], '{:.0f}')} |")
md.append("")
md.append("## sessionhub / peer\n")
md.append("| scenario | sessionhub | peer | node CPU per unit | target | Redis CPU per unit | target | p99 |")
md.append("|---|---|---|---|---|---|---|---|")
for c in comparisons:
    def verdict(r, ceiling):
        if ceiling is None:
            return "-"
        if not r:
            return f"<= {ceiling}x: -"
        return f"<= {ceiling}x: {'**met**' if r['of_medians'] <= ceiling else '**not met**'}"
    md.append(f"| {c['scenario']} | {c['ours']} | {c['peer']} | {rt(c['node_cpu'])} | {verdict(c['node_cpu'], c['node_target'])} | "
              f"{rt(c['redis_cpu'])} | {verdict(c['redis_cpu'], c['redis_target'])} | {rt(c['p99'])} |")
md.append("")
with open(out + ".md", "w") as f:
    f.write("\n".join(md))
print(f"wrote {out}.json and {out}.md", file=sys.stderr)
