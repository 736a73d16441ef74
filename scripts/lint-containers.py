#!/usr/bin/env python3
"""Lints what CI can of the container files it cannot build (no container engine there):
deploy/compose.yaml parses, has Redis, three nodes built from the Dockerfile and nginx with
deploy/nginx.conf; the Dockerfile runs as a non-root user with a /readyz health check;
deploy/nginx.conf names every node as an upstream. Exits non-zero with the reason."""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
problems = []

compose = yaml.safe_load((root / "deploy/compose.yaml").read_text())
services = compose.get("services", {})
nodes = sorted(n for n in services if n.startswith("node"))
if nodes != ["node1", "node2", "node3"]:
    problems.append(f"compose: expected node1..node3, got {nodes}")
for name in nodes:
    node = services[name]
    build = node.get("build", {})
    if (root / "deploy" / build.get("context", "") / build.get("dockerfile", "")).resolve() != root / "Dockerfile":
        problems.append(f"compose: {name} is not built from the Dockerfile")
    env = node.get("environment", {})
    if env.get("SESSIONHUB_REDIS") != "redis://redis:6379":
        problems.append(f"compose: {name} does not use the redis service")
    if env.get("SESSIONHUB_NODE_ID") != name:
        problems.append(f"compose: {name} has node id {env.get('SESSIONHUB_NODE_ID')}")
if "redis" not in services or "healthcheck" not in services["redis"]:
    problems.append("compose: no redis service with a health check")
nginx = services.get("nginx", {})
if "./nginx.conf:/etc/nginx/nginx.conf:ro" not in nginx.get("volumes", []):
    problems.append("compose: nginx does not mount deploy/nginx.conf")

dockerfile = (root / "Dockerfile").read_text()
stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
if len(stages) < 2 or any(":" not in s for s in stages):
    problems.append(f"Dockerfile: expected a build and a runtime stage with pinned tags, got {stages}")
user = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
if not user or user[-1] in ("root", "0"):
    problems.append("Dockerfile: the runtime stage must not run as root")
if not re.search(r"^HEALTHCHECK .*\n?.*?/readyz", dockerfile, re.M):
    problems.append("Dockerfile: no HEALTHCHECK on /readyz")

upstreams = re.findall(r"server\s+(node\d):8080;", (root / "deploy/nginx.conf").read_text())
if sorted(upstreams) != nodes:
    problems.append(f"deploy/nginx.conf: upstreams {upstreams} do not match the nodes {nodes}")

for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
