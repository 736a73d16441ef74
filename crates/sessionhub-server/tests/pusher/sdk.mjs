// Runs calls of the `pusher` Node server SDK (package.json pins it) against a sessionhub
// node, for crates/sessionhub-server/tests/pusher_http.rs, and signs as the SDK signs, for
// tests/pusher_auth.rs.
//
// node sdk.mjs '<json>' with {"port", "app": {"id", "key", "secret"[, "masterKey"]}, "calls": [...]}
// (masterKey: the encryption master key, base64, for encrypted channels): each
// call is {"call": "trigger" | "triggerBatch" | "get" | "sendToUser" |
// "terminateUserConnections" |
// "webhook" | "authorizeChannel" | "authenticateUser", ...its arguments}; prints one JSON
// line per call, {"ok": <answer>} or {"error": {"status", "body", "message"}}.
import Pusher from "pusher";

const { port, app, calls } = JSON.parse(process.argv[2]);
const pusher = new Pusher({
  appId: app.id,
  key: app.key,
  secret: app.secret,
  host: "127.0.0.1",
  port: String(port),
  useTLS: false,
  timeout: 5000,
  encryptionMasterKeyBase64: app.masterKey,
});

async function run(call) {
  switch (call.call) {
    case "trigger":
      return (await pusher.trigger(call.channels, call.event, call.data, call.params)).json();
    case "triggerBatch":
      return (await pusher.triggerBatch(call.batch)).json();
    case "get":
      return (await pusher.get({ path: call.path, params: call.params || {} })).json();
    case "sendToUser":
      return (await pusher.sendToUser(call.user, call.event, call.data)).json();
    case "terminateUserConnections":
      return (await pusher.terminateUserConnections(call.user)).json();
    case "webhook": {
      const webhook = pusher.webhook({ headers: call.headers, rawBody: call.body });
      if (!webhook.isValid()) return { valid: false };
      return { valid: true, time: webhook.getTime().getTime(), events: webhook.getEvents() };
    }
    case "authorizeChannel":
      return pusher.authorizeChannel(call.socket_id, call.channel, call.data);
    case "authenticateUser":
      return pusher.authenticateUser(call.socket_id, call.user_data);
    default:
      throw new Error(`unknown call ${call.call}`);
  }
}

for (const call of calls) {
  try {
    console.log(JSON.stringify({ ok: await run(call) }));
  } catch (e) {
    console.log(JSON.stringify({ error: { status: e.status ?? null, body: e.body ?? null, message: String(e.message) } }));
  }
}
