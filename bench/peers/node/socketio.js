// Peer for the fan-out benchmark: socket.io + @socket.io/redis-adapter.
// A client joins room `user` (query ?user=); POST /socket/:id and the client event
// `push {to, msg}` emit `msg` to room `to` on every node.
// Usage: node socketio.js <port> <redis-url>
const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const [port, url] = process.argv.slice(2);
  const pub = createClient({ url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const server = http.createServer((req, res) => {
    const m = /^\/socket\/([^/?]+)/.exec(req.url);
    if (req.method !== "POST" || !m) {
      res.writeHead(404).end();
      return;
    }
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      io.to(decodeURIComponent(m[1])).emit("msg", Buffer.concat(chunks).toString());
      res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
    });
  });
  const io = new Server(server, { adapter: createAdapter(pub, sub) });
  io.on("connection", (socket) => {
    const user = socket.handshake.query.user;
    if (user) socket.join(String(user));
    socket.on("push", (p) => io.to(String(p.to)).emit("msg", p.msg));
  });
  server.listen(Number(port), "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
