// Drives unmodified pusher-js clients for crates/sessionhub-server/tests/pusher.rs.
//
// Reads one JSON command per line on stdin, writes one JSON event per line on stdout:
//   {"cmd":"connect","client":"a","key":"k","host":"127.0.0.1","port":8080,"secret":"s",
//    "user":{"user_id":"1","user_info":{...}},                (the presence member)
//    "signin":{"user_data":{"id":"1","watchlist":[...]}}       (signed with `secret`)
//          or {"endpoint":"http://…/pusher/user-auth","session":"…"}}  (sessionhub's own)
//   {"cmd":"signin","client":"a"}                            (pusher.signin())
//   {"cmd":"subscribe","client":"a","channel":"private-x","bind":["client-e"]}
//        (signed with `secret`, as an app's auth endpoint would; `bind`: see subscribe)
//   {"cmd":"unsubscribe","client":"a","channel":"x"}
//   {"cmd":"trigger","client":"a","channel":"private-x","event":"client-e","data":{...}}
//   {"cmd":"disconnect","client":"a"}
// Events: {"client","type":"connected","socket_id"}, {"type":"state","current"},
// {"type":"error","data"}, {"type":"event","channel","event","data"},
// {"type":"metadata","channel","event","user_id"}, {"type":"signin","user_data"},
// {"type":"signin_error","data"}, {"type":"user_event","event","data"} (pusher.user),
// {"type":"watchlist","name","user_ids"} (pusher.user.watchlist),
// {"type":"done","cmd"} after every command; {"type":"failed","message"} on a bad command.
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import Pusher from 'pusher-js';

const clients = new Map();
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n');

// pusher-js's userAuthentication: signing `user_data` as an app's backend would, or
// sessionhub's built-in endpoint for the HTTP session `session` (in the x-auth-token
// header: Node's XMLHttpRequest sends no Cookie).
function userAuthentication(key, secret, signin) {
  if (signin?.endpoint) {
    return { endpoint: signin.endpoint, transport: 'ajax', headers: { 'x-auth-token': signin.session } };
  }
  return {
    customHandler: ({ socketId }, callback) => {
      const user_data = JSON.stringify(signin?.user_data ?? {});
      const signature = createHmac('sha256', secret)
        .update(`${socketId}::user::${user_data}`)
        .digest('hex');
      callback(null, { auth: `${key}:${signature}`, user_data });
    },
  };
}

function connect({ client, key, host, port, secret, user, signin }) {
  const pusher = new Pusher(key, {
    userAuthentication: userAuthentication(key, secret, signin),
    cluster: 'unused',
    wsHost: host,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      // What an app's backend does: sign socket_id:channel with the app's secret.
      // On presence channels, channel_data (the member: `user`) is signed too.
      customHandler: ({ socketId, channelName }, callback) => {
        const presence = channelName.startsWith('presence-');
        const channel_data = presence ? JSON.stringify(user) : undefined;
        const signed = presence
          ? `${socketId}:${channelName}:${channel_data}`
          : `${socketId}:${channelName}`;
        const signature = createHmac('sha256', secret).update(signed).digest('hex');
        callback(null, { auth: `${key}:${signature}`, channel_data });
      },
    },
  });
  pusher.connection.bind('state_change', ({ current }) =>
    say({ client, type: 'state', current }),
  );
  pusher.connection.bind('connected', () =>
    say({ client, type: 'connected', socket_id: pusher.connection.socket_id }),
  );
  pusher.connection.bind('error', (error) =>
    say({ client, type: 'error', data: error?.data ?? error?.error ?? null }),
  );
  pusher.bind('pusher:signin_success', (data) =>
    say({ client, type: 'signin', user_data: JSON.parse(data.user_data) }),
  );
  pusher.user.bind('pusher:signin_error', (data) => say({ client, type: 'signin_error', data }));
  pusher.user.bind_global((event, data) => {
    if (event !== 'pusher:signin_error') say({ client, type: 'user_event', event, data });
  });
  for (const name of ['online', 'offline']) {
    pusher.user.watchlist.bind(name, ({ user_ids }) =>
      say({ client, type: 'watchlist', name, user_ids }),
    );
  }
  clients.set(client, pusher);
}

function subscribe({ client, channel, bind = [] }) {
  const subscription = clients.get(client).subscribe(channel);
  // Global callbacks get no metadata (a presence client event's user_id): events named
  // in `bind` are bound one by one as well, and report it.
  for (const event of bind) {
    subscription.bind(event, (data, metadata) =>
      say({ client, type: 'metadata', channel, event, user_id: metadata?.user_id }),
    );
  }
  subscription.bind_global((event, data) => {
    // A presence channel's Members (its subscription_succeeded data) as plain JSON.
    if (data && data.members && typeof data.each === 'function') {
      data = { members: data.members, count: data.count, me: data.me };
    }
    say({ client, type: 'event', channel, event, data });
  });
}

const commands = {
  connect,
  subscribe,
  unsubscribe: ({ client, channel }) => clients.get(client).unsubscribe(channel),
  trigger: ({ client, channel, event, data }) => {
    const sent = clients.get(client).channel(channel).trigger(event, data);
    if (!sent) throw new Error(`trigger ${event} on ${channel} was not sent`);
  },
  disconnect: ({ client }) => clients.get(client).disconnect(),
  signin: ({ client }) => clients.get(client).signin(),
};

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  let command;
  try {
    command = JSON.parse(line);
    commands[command.cmd](command);
    say({ client: command.client, type: 'done', cmd: command.cmd });
  } catch (e) {
    say({ client: command?.client, type: 'failed', message: String(e) });
  }
});
lines.on('close', () => process.exit(0));
