"""Runs calls of the `pusher` Python server SDK (requirements.txt pins it) against a
sessionhub node, for crates/sessionhub-server/tests/pusher_http.rs.

python sdk.py '<json>' with {"port", "app": {"id", "key", "secret"}, "calls": [...]}: each
call is {"call": "trigger" | "trigger_batch" | "channels_info" | "channel_info" |
"users_info" | "terminate_user_connections" | "validate_webhook", ...its arguments};
prints one JSON line per call, {"ok": <answer>} or {"error": {"type", "message"}}.
"""

import json
import sys

import pusher

spec = json.loads(sys.argv[1])
app = spec["app"]
client = pusher.Pusher(
    app_id=app["id"],
    key=app["key"],
    secret=app["secret"],
    host="127.0.0.1",
    port=spec["port"],
    ssl=False,
    timeout=5,
)


def run(call):
    name = call["call"]
    if name == "trigger":
        return client.trigger(
            call["channels"], call["event"], call["data"], call.get("socket_id")
        )
    if name == "trigger_batch":
        return client.trigger_batch(call["batch"])
    if name == "channels_info":
        return client.channels_info(call.get("prefix"), call.get("attributes", []))
    if name == "channel_info":
        return client.channel_info(call["channel"], call.get("attributes", []))
    if name == "users_info":
        return client.users_info(call["channel"])
    if name == "terminate_user_connections":
        return client.terminate_user_connections(call["user"])
    if name == "validate_webhook":
        return client.validate_webhook(call["key"], call["signature"], call["body"])
    raise ValueError("unknown call " + name)


for call in spec["calls"]:
    try:
        print(json.dumps({"ok": run(call)}), flush=True)
    except Exception as e:  # every failure is an answer the test checks
        print(json.dumps({"error": {"type": type(e).__name__, "message": str(e)}}), flush=True)
