// One unmodified pusher-js client whose subscriptions are authorized by sessionhub's built-in
// endpoint, for crates/sessionhub-server/tests/pusher_auth.rs.
//
// node auth_driver.mjs '<json>' with {"key", "port", "session", "channels": [...][, "publish"]}: connects
// to 127.0.0.1:<port>, subscribes to every channel with pusher-js's own ajax authorization
// against http://127.0.0.1:<port>/pusher/auth, presenting the HTTP session in the
// `x-auth-token` header (the Node XMLHttpRequest refuses to send a Cookie header), and prints
// one JSON line per channel, {"channel", "succeeded": true} (on a presence channel with
// "me", the member pusher-js says it is, and "members", every member's {id, info}) or
// {"channel", "error": {...}}, then exits. With "publish": {"app": {"id", "secret", "masterKey"},
// "channel", "event", "data"}, once that channel is subscribed Pusher's Node server SDK
// triggers the event on it through the server's HTTP API (encrypting it on an encrypted
// channel), and the channel's line is {"channel", "event", "data"} as pusher-js delivers it
// (decrypted with the shared_secret the endpoint gave).
import Pusher from 'pusher-js';
import PusherServer from 'pusher';

const { key, port, session, channels, publish } = JSON.parse(process.argv[2]);
const pusher = new Pusher(key, {
  cluster: 'unused',
  wsHost: '127.0.0.1',
  wsPort: port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  channelAuthorization: {
    endpoint: `http://127.0.0.1:${port}/pusher/auth`,
    transport: 'ajax',
    headers: { 'x-auth-token': session },
  },
});

let left = channels.length;
const done = (line) => {
  process.stdout.write(JSON.stringify(line) + '\n');
  if (--left === 0) {
    pusher.disconnect();
    process.exit(0);
  }
};
for (const channel of channels) {
  const subscription = pusher.subscribe(channel);
  subscription.bind('pusher:subscription_succeeded', (members) => {
    if (publish?.channel === channel) return trigger(subscription);
    if (!channel.startsWith('presence-')) return done({ channel, succeeded: true });
    const all = [];
    members.each((member) => all.push(member));
    done({ channel, succeeded: true, me: members.me, members: all });
  });
  subscription.bind('pusher:subscription_error', (error) =>
    done({ channel, error: { type: error?.type ?? null, status: error?.status ?? null } }),
  );
}
async function trigger(subscription) {
  const { app, channel, event, data } = publish;
  subscription.bind(event, (received) => done({ channel, event, data: received }));
  const server = new PusherServer({
    appId: app.id,
    key,
    secret: app.secret,
    host: '127.0.0.1',
    port: String(port),
    useTLS: false,
    encryptionMasterKeyBase64: app.masterKey,
  });
  await server.trigger(channel, event, data);
}
setTimeout(() => {
  process.stdout.write(JSON.stringify({ timeout: true }) + '\n');
  process.exit(1);
}, 10000);
