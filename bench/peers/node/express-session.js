// Peer for the sessions benchmark: express + express-session + connect-redis.
// /login?username= sets `username` and regenerates the id; /get-session increments `count`;
// /read-session only reads. Usage: node express-session.js <port> <redis-url>
const express = require("express");
const session = require("express-session");
const { RedisStore } = require("connect-redis");
const { createClient } = require("redis");

async function main() {
  const [port, url] = process.argv.slice(2);
  const client = createClient({ url });
  await client.connect();
  const app = express();
  app.use(
    session({
      store: new RedisStore({ client, prefix: "sess:" }),
      secret: "bench-only-secret",
      resave: false,
      saveUninitialized: false,
      cookie: { maxAge: 30 * 60 * 1000 },
    }),
  );
  const describe = (req) => ({
    username: req.session.username,
    count: req.session.count,
    sessionId: req.sessionID,
  });
  app.all("/login", (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.username = String(req.query.username || "user");
      res.json(describe(req));
    });
  });
  app.all("/get-session", (req, res) => {
    req.session.count = (req.session.count || 0) + 1;
    res.json(describe(req));
  });
  app.get("/read-session", (req, res) => res.json(describe(req)));
  app.listen(Number(port), "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
