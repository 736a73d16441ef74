// Drives unmodified pusher-js clients for crates/sessionhub-server/tests/pusher.rs.
//
// Reads one JSON command per line on stdin, writes one JSON event per line on stdout:
//   {"cmd":"connect","client":"a","key":"k","host":"127.0.0.1","port":8080,"secret":"s"}
//   {"cmd":"subscribe","client":"a","channel":"private-x"}   (signed with `secret`, as an
//                                                            app's auth endpoint would)
//   {"cmd":"unsubscribe","client":"a","channel":"x"}
//   {"cmd":"trigger","client":"a","channel":"private-x","event":"client-e","data":{...}}
//   {"cmd":"disconnect","client":"a"}
// Events: {"client","type":"connected","socket_id"}, {"type":"state","current"},
// {"type":"error","data"}, {"type":"event","channel","event","data","user_id"},
// {"type":"done","cmd"} after every command; {"type":"failed","message"} on a bad command.
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import Pusher from 'pusher-js';

const clients = new Map();
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n');

function connect({ client, key, host, port, secret }) {
  const pusher = new Pusher(key, {
    cluster: 'unused',
    wsHost: host,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      // What an app's backend does: sign socket_id:channel with the app's secret.
      customHandler: ({ socketId, channelName }, callback) => {
        const signature = createHmac('sha256', secret)
          .update(`${socketId}:${channelName}`)
          .digest('hex');
        callback(null, { auth: `${key}:${signature}` });
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
  clients.set(client, pusher);
}

function subscribe({ client, channel }) {
  const subscription = clients.get(client).subscribe(channel);
  subscription.bind_global((event, data, metadata) => {
    say({ client, type: 'event', channel, event, data, user_id: metadata?.user_id });
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
