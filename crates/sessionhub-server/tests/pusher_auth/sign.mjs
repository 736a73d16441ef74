// Signs what sessionhub's /pusher/auth and /pusher/user-auth signed, with Pusher's own Node
// server SDK: reads {app: {id, key, secret}, requests: [...]} as JSON on stdin, writes one
// answer per request as JSON on stdout. A request is {socket_id, channel, presence_data?}
// (authorizeChannel) or {socket_id, user_data} (authenticateUser).
import Pusher from "pusher";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { app, requests } = JSON.parse(input);
const pusher = new Pusher({ appId: app.id, key: app.key, secret: app.secret });
const answers = requests.map((r) =>
  r.user_data !== undefined
    ? pusher.authenticateUser(r.socket_id, r.user_data)
    : pusher.authorizeChannel(r.socket_id, r.channel, r.presence_data),
);
process.stdout.write(JSON.stringify(answers));
