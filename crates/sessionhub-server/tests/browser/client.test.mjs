// Unit tests of sessionhub.js against a scripted fake WebSocket: `node --test client.test.mjs`
// (run by `cargo test -p sessionhub-server --test browser client_logic`). The browser test
// (run.mjs) covers the real thing end to end; these cover the corners a real server does not
// produce on demand: duplicates, stale offsets, refusals, timeouts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../../../sessionhub/assets/sessionhub.js";

/** A WebSocket whose server side the test plays. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
  }
  /** The upgrade succeeded and the server greets. */
  open(node = "n1") {
    this.readyState = 1;
    this.frame({ type: "connected", client: `${node}/1`, node, user: "alice" });
  }
  frame(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** The last frame sent of `type`. */
  last(type) {
    return this.sent.filter((f) => f.type === type).at(-1);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) for the `n`th socket (1-based) to be created. */
async function socket(n) {
  for (let i = 0; i < 500 && FakeSocket.all.length < n; i++) await sleep(2);
  assert.ok(FakeSocket.all.length >= n, `socket ${n} was never opened`);
  return FakeSocket.all[n - 1];
}

function hub(url = ["ws://a/ws", "ws://b/ws"], options = {}) {
  FakeSocket.all = [];
  // No SSE fallback unless a test asks (Node may have a global EventSource).
  return connect(url, { WebSocket: FakeSocket, minDelay: 2, maxDelay: 8, params: { user: "alice" }, fallbackAfter: 0, ...options });
}

const pub = (channel, epoch, offset, data) => ({ type: "publication", channel, epoch, offset, data });

test("delivers in order, once, recovered before live, and resubscribes from the last offset", async () => {
  const h = hub();
  const got = [];
  const events = [];
  h.on("reconnecting", (e) => events.push(["reconnecting", e]));
  h.on("connected", (e) => events.push(["connected", e.node]));
  h.on("disconnected", (e) => events.push(["disconnected", e.code]));
  h.subscribe("room:1", { onPublication: (p) => got.push([p.offset, p.data, p.recovered]) });
  const a = await socket(1);
  assert.equal(a.url, "ws://a/ws?user=alice");
  a.open("n1");
  const sub = a.last("subscribe");
  assert.equal(sub.channel, "room:1");
  assert.equal(sub.recover, undefined, "a first subscribe has nothing to recover");
  a.frame({ type: "subscribed", id: sub.id, channel: "room:1", epoch: "E", offset: 4, recovered: true, publications: [] });
  a.frame(pub("room:1", "E", 5, "five"));
  a.frame(pub("room:1", "E", 5, "five again")); // duplicate
  a.frame(pub("room:1", "E", 3, "old")); // older than what was confirmed
  a.frame(pub("room:1", "E", 6, "six"));
  a.drop();

  const b = await socket(2);
  assert.equal(b.url, "ws://b/ws?user=alice", "the next URL in the list");
  b.open("n2");
  const again = b.last("subscribe");
  assert.deepEqual(again.recover, { epoch: "E", offset: 6 });
  b.frame({
    type: "subscribed", id: again.id, channel: "room:1", epoch: "E", offset: 8, recovered: true,
    publications: [{ offset: 7, data: "seven" }, { offset: 8, data: "eight" }],
  });
  b.frame(pub("room:1", "E", 8, "eight live")); // already recovered
  b.frame(pub("room:1", "E", 9, "nine"));
  assert.deepEqual(got, [
    [5, "five", false], [6, "six", false], [7, "seven", true], [8, "eight", true], [9, "nine", false],
  ]);
  const delay = events.find(([t]) => t === "reconnecting")[1];
  assert.equal(delay.attempt, 1);
  assert.ok(delay.delay >= 1 && delay.delay <= 3, `first delay ${delay.delay} within 2 ms ±50%`);
  assert.deepEqual(events.filter(([t]) => t !== "reconnecting"), [
    ["connected", "n1"], ["disconnected", 1006], ["connected", "n2"],
  ]);
  h.close();
});

test("a failed recovery is reported and live delivery continues from the new position", async () => {
  const h = hub("ws://a/ws");
  const got = [];
  const failed = [];
  const global = [];
  h.on("recoveryfailed", (e) => global.push(e.channel));
  h.subscribe("user:alice", {
    onPublication: (p) => got.push(p.offset),
    onRecoveryFailed: (e) => failed.push(e),
    since: { epoch: "E", offset: 2 },
  });
  const a = await socket(1);
  a.open();
  const s = a.last("subscribe");
  assert.deepEqual(s.recover, { epoch: "E", offset: 2 }, "`since` recovers on the first subscribe");
  a.frame({ type: "subscribed", id: s.id, channel: "user:alice", epoch: "F", offset: 20, recovered: false, publications: [] });
  a.frame(pub("user:alice", "F", 21, "x"));
  assert.deepEqual(got, [21]);
  assert.deepEqual(failed, [{ channel: "user:alice", epoch: "F", offset: 20, since: { epoch: "E", offset: 2 } }]);
  assert.deepEqual(global, ["user:alice"]);
  h.close();
});

test("publish resolves on published, rejects on error, and is resent with its key after a drop", async () => {
  const h = hub("ws://a/ws");
  const early = h.publish("room:1", { n: 1 }); // before the connection: queued
  const a = await socket(1);
  a.open();
  const first = a.last("publish");
  assert.deepEqual(first.data, { n: 1 });
  assert.match(first.idempotency_key, /^[0-9a-f]{32}$/);
  a.frame({ type: "published", id: first.id, channel: "room:1", epoch: "E", offset: 1 });
  assert.deepEqual(await early, { channel: "room:1", epoch: "E", offset: 1, duplicate: false });

  const refused = h.publish("session:x", 1);
  a.frame({ type: "error", id: a.last("publish").id, code: "invalid_channel", message: "no" });
  await assert.rejects(refused, (e) => e.code === "invalid_channel");

  // An error without an id (a frame the server could not parse) answers the oldest request.
  const unparsed = h.publish("room:1", 1);
  const next = h.publish("room:1", 2);
  a.frame({ type: "error", code: "invalid_message", message: "bad frame" });
  await assert.rejects(unparsed, (e) => e.code === "invalid_message");
  a.frame({ type: "published", id: a.last("publish").id, channel: "room:1", epoch: "E", offset: 3 });
  assert.equal((await next).offset, 3);

  const lost = h.publish("room:1", "retry me", { idempotencyKey: "k-1" });
  const sent = a.last("publish");
  a.drop();
  const b = await socket(2);
  b.open();
  const resent = b.last("publish");
  assert.equal(resent.idempotency_key, "k-1");
  assert.equal(resent.data, "retry me");
  assert.notEqual(resent.id, sent.id);
  b.frame({ type: "published", id: resent.id, channel: "room:1", epoch: "E", offset: 2, duplicate: true });
  assert.equal((await lost).duplicate, true);
  h.close();
  await assert.rejects(h.publish("room:1", 1), (e) => e.code === "closed");
});

test("disconnect with reconnect:false stops for good", async () => {
  const h = hub("ws://a/ws");
  const seen = [];
  h.on("disconnected", (e) => seen.push(e));
  h.on("closed", () => seen.push("closed"));
  const a = await socket(1);
  a.open();
  const pending = h.publish("room:1", 1);
  a.frame({ type: "disconnect", code: 4002, reason: "session ended", reconnect: false });
  a.drop(4002, "session ended");
  await assert.rejects(pending, (e) => e.code === "closed");
  await sleep(30);
  assert.equal(FakeSocket.all.length, 1, "no reconnect");
  assert.equal(h.state, "closed");
  assert.deepEqual(seen, [{ code: 4002, reason: "session ended", reconnect: false }, "closed"]);
});

test("4010 (insufficient state) reconnects and recovers", async () => {
  const h = hub("ws://a/ws");
  h.subscribe("room:1", {});
  const a = await socket(1);
  a.open();
  const s = a.last("subscribe");
  a.frame({ type: "subscribed", id: s.id, channel: "room:1", epoch: "E", offset: 7, recovered: true, publications: [] });
  a.frame({ type: "disconnect", code: 4010, reason: "insufficient state", reconnect: true });
  a.drop(4010, "insufficient state");
  const b = await socket(2);
  b.open();
  assert.deepEqual(b.last("subscribe").recover, { epoch: "E", offset: 7 });
  h.close();
});

test("an unsubscribe while the subscribe is in flight silences the channel", async () => {
  const h = hub("ws://a/ws");
  const got = [];
  const sub = h.subscribe("room:1", { onPublication: (p) => got.push(p), onSubscribed: (e) => got.push(e) });
  const a = await socket(1);
  a.open();
  const s = a.last("subscribe");
  sub.unsubscribe();
  assert.equal(a.last("unsubscribe").channel, "room:1");
  a.frame({ type: "subscribed", id: s.id, channel: "room:1", epoch: "E", offset: 0, recovered: true, publications: [] });
  a.frame(pub("room:1", "E", 1, "late"));
  assert.deepEqual(got, []);
  // The channel can be joined again.
  h.subscribe("room:1", {});
  assert.equal(a.last("subscribe").channel, "room:1");
  h.close();
});

test("a refused subscription reports the error; broker_unavailable is retried", async () => {
  const h = hub("ws://a/ws");
  const errors = [];
  h.subscribe("user:bob", { onError: (e) => errors.push(e.code) });
  h.subscribe("room:1", { onError: (e) => errors.push(e.code) });
  const a = await socket(1);
  a.open();
  const [bob, room] = a.sent.filter((f) => f.type === "subscribe");
  a.frame({ type: "error", id: bob.id, code: "forbidden", message: "no" });
  a.frame({ type: "error", id: room.id, code: "broker_unavailable", message: "later" });
  assert.deepEqual(errors, ["forbidden"]);
  for (let i = 0; i < 100 && a.sent.filter((f) => f.type === "subscribe").length < 3; i++) await sleep(2);
  const retried = a.last("subscribe");
  assert.equal(retried.channel, "room:1");
  assert.notEqual(retried.id, room.id);
  assert.throws(() => h.subscribe("room:1", {}), /already subscribed/);
  h.close();
});

test("backoff doubles up to maxDelay with ±50% jitter, and a URL function is awaited", async () => {
  const asked = [];
  const h = hub(async (attempt) => {
    asked.push(attempt);
    return "http://a/ws"; // http: becomes ws:
  }, { minDelay: 4, maxDelay: 16 });
  const delays = [];
  h.on("reconnecting", (e) => delays.push(e));
  for (let n = 1; n <= 5; n++) (await socket(n)).drop();
  await socket(6);
  assert.equal(FakeSocket.all[0].url, "ws://a/ws?user=alice");
  assert.deepEqual(asked, [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(delays.map((d) => d.attempt), [1, 2, 3, 4, 5]);
  const bases = [4, 8, 16, 16, 16];
  delays.forEach((d, i) => assert.ok(d.delay >= bases[i] / 2 && d.delay <= bases[i] * 1.5, `delay ${i + 1}: ${d.delay}`));
  FakeSocket.all[5].open();
  FakeSocket.all[5].drop();
  await socket(7);
  assert.equal(delays.at(-1).attempt, 1, "a greeting resets the backoff");
  h.close();
});

test("a server that stops answering pings is left", async () => {
  const h = hub("ws://a/ws", { pingInterval: 5, pongTimeout: 10 });
  const seen = [];
  h.on("disconnected", (e) => seen.push(e.reason));
  const a = await socket(1);
  a.open();
  await socket(2);
  assert.ok(a.sent.some((f) => f.type === "ping"));
  assert.deepEqual(seen, ["no answer to ping"]);
  h.close();
});

test("an attempt that gets no greeting is abandoned", async () => {
  const h = hub("ws://a/ws", { connectTimeout: 10 });
  await socket(1); // never greets
  await socket(2);
  h.close();
});

/** An EventSource whose server side the test plays. */
class FakeEventSource {
  static all = [];
  constructor(url, init) {
    this.url = new URL(url);
    this.init = init;
    this.listeners = {};
    this.closed = false;
    FakeEventSource.all.push(this);
  }
  addEventListener(type, fn) {
    this.listeners[type] = fn;
  }
  close() {
    this.closed = true;
  }
  event(type, frame) {
    this.listeners[type]?.({ data: JSON.stringify(frame) });
  }
  /** The stream ends (or could not be opened). */
  fail() {
    this.onerror?.({});
  }
}

async function eventSource(n) {
  for (let i = 0; i < 500 && FakeEventSource.all.length < n; i++) await sleep(2);
  assert.ok(FakeEventSource.all.length >= n, `event source ${n} was never opened`);
  return FakeEventSource.all[n - 1];
}

test("falls back to SSE after WebSockets fail twice, recovers from its positions, publishes over POST", async () => {
  FakeEventSource.all = [];
  const posted = [];
  globalThis.fetch = async (url, init) => {
    posted.push({ url: String(url), init });
    const frame = JSON.parse(init.body);
    const body = { type: "published", id: frame.id, channel: frame.channel, epoch: "e", offset: 9 };
    return { ok: true, json: async () => body };
  };
  const h = hub("ws://a/ws", { EventSource: FakeEventSource, fallbackAfter: 2 });
  const got = [];
  const transports = [];
  h.on("connected", (e) => transports.push(e.transport));
  h.subscribe("room:1", { onPublication: (p) => got.push(p.offset), since: { epoch: "e", offset: 2 } });
  (await socket(1)).drop();
  (await socket(2)).drop();
  const es = await eventSource(1);
  assert.equal(FakeSocket.all.length, 2, "no third WebSocket");
  assert.equal(es.url.pathname, "/sse");
  assert.equal(es.url.protocol, "http:");
  assert.equal(es.url.searchParams.get("user"), "alice");
  assert.equal(es.url.searchParams.get("channels"), "room:1");
  assert.equal(es.url.searchParams.get("lastEventId"), "room:1=e:2");
  assert.equal(es.init.withCredentials, true);
  es.event("connected", { type: "connected", client: "n1/1", node: "n1", user: "alice" });
  es.event("subscribed", { type: "subscribed", channel: "room:1", epoch: "e", offset: 4, recovered: true,
    publications: [{ offset: 3, data: 3 }, { offset: 4, data: 4 }] });
  es.event("publication", pub("room:1", "e", 5, 5));
  es.event("publication", pub("room:1", "e", 5, 5)); // a duplicate is dropped
  assert.deepEqual(got, [3, 4, 5]);
  assert.deepEqual(transports, ["sse"]);
  const receipt = await h.publish("room:1", { text: "hi" });
  assert.equal(receipt.offset, 9);
  assert.equal(posted[0].url, "http://a/sse/publish?user=alice");
  assert.equal(posted[0].init.headers["content-type"], "application/json");
  assert.equal(JSON.parse(posted[0].init.body).channel, "room:1");
  // The stream drops: reopened (never by EventSource itself) from the last position delivered.
  es.fail();
  assert.ok(es.closed);
  const again = await eventSource(2);
  assert.equal(again.url.searchParams.get("lastEventId"), "room:1=e:5");
  h.close();
  delete globalThis.fetch;
});

test("a presence channel's member list and its joins and leaves reach the subscription", async () => {
  const h = hub();
  const seen = [];
  const sub = h.subscribe("room:1", {
    onSubscribed: (info) => seen.push(["subscribed", info.presence]),
    onPresence: (event) => seen.push([event.type, event.user]),
  });
  const ws = await socket(1);
  ws.open();
  // Before the subscription is confirmed, presence frames are not passed on.
  ws.frame({ type: "join", channel: "room:1", user: "early", version: 1 });
  const presence = [{ user: "alice", connections: 1 }];
  ws.frame({ type: "subscribed", id: ws.last("subscribe").id, channel: "room:1", epoch: "e", offset: 0, recovered: true, publications: [], presence });
  ws.frame({ type: "join", channel: "room:1", user: "bob", version: 2 });
  ws.frame({ type: "join", channel: "room:2", user: "carol", version: 3 });
  ws.frame({ type: "leave", channel: "room:1", user: "bob", version: 4 });
  sub.unsubscribe();
  ws.frame({ type: "leave", channel: "room:1", user: "alice", version: 5 });
  assert.deepEqual(seen, [["subscribed", presence], ["join", "bob"], ["leave", "bob"]]);
  h.close();
});

test("a subscription the server API made is delivered, kept across a reconnect, and ended by the server", async () => {
  const got = [];
  const ended = [];
  const asked = [];
  const h = hub(undefined, {
    onServerSubscribe: (channel) => {
      asked.push(channel);
      return { onPublication: (p) => got.push([p.channel, p.offset]), onUnsubscribed: (e) => ended.push(e) };
    },
  });
  const ws = await socket(1);
  ws.open();
  // No id: the server API's order, not an answer to this client.
  ws.frame({ type: "subscribed", channel: "news", epoch: "e", offset: 4, recovered: true, publications: [] });
  ws.frame(pub("news", "e", 5, "a"));
  assert.deepEqual(asked, ["news"]);
  assert.deepEqual(got, [["news", 5]]);
  // After a reconnect the client subscribes again itself, recovering from offset 5.
  ws.drop();
  const again = await socket(2);
  again.open();
  const resubscribe = again.last("subscribe");
  assert.equal(resubscribe.channel, "news");
  assert.deepEqual(resubscribe.recover, { epoch: "e", offset: 5 });
  again.frame({ type: "subscribed", id: resubscribe.id, channel: "news", epoch: "e", offset: 6, recovered: true, publications: [{ offset: 6, data: "b" }] });
  assert.deepEqual(got, [["news", 5], ["news", 6]]);
  again.frame({ type: "unsubscribed", channel: "news" });
  again.frame(pub("news", "e", 7, "c"));
  assert.deepEqual(got, [["news", 5], ["news", 6]], "nothing after the server's unsubscribe");
  assert.deepEqual(ended, [{ channel: "news", byServer: true }]);
  assert.deepEqual(asked, ["news"], "asked once");
  h.close();
});

test("getToken gives every connect its token and refreshes it before it expires", async () => {
  let issued = 0;
  const h = hub("ws://a/ws", { params: {}, getToken: async () => `t${++issued}`, refreshBefore: 980 });
  const errors = [];
  h.on("error", (e) => errors.push(e.code));
  const a = await socket(1);
  assert.equal(a.url, "ws://a/ws?token=t1");
  a.readyState = 1;
  // 60 ms left, refreshed 980 ms before but at most a third of it (20 ms): after ~40 ms.
  a.frame({ type: "connected", client: "n1/1", node: "n1", user: "alice", expires_in: 0.06 });
  assert.equal(a.last("refresh"), undefined, "not at once");
  for (let i = 0; i < 100 && !a.last("refresh"); i++) await sleep(5);
  const first = a.last("refresh");
  assert.equal(first?.token, "t2", "a fresh token from getToken");
  a.frame({ type: "refreshed", id: first.id, expires_in: 0.06 });
  for (let i = 0; i < 100 && a.last("refresh") === first; i++) await sleep(5);
  const second = a.last("refresh");
  assert.equal(second.token, "t3", "each refresh schedules the next");
  a.frame({ type: "error", id: second.id, code: "token_wrong_user", message: "m" });
  assert.deepEqual(errors, ["token_wrong_user"], "a refused refresh is reported");
  a.drop(4003);
  const b = await socket(2);
  assert.equal(b.url, "ws://a/ws?token=t4", "a reconnect asks for a token again");
  b.open();
  await sleep(100);
  assert.equal(b.last("refresh"), undefined, "no expires_in, no refresh");
  h.close();
});

test("getSubscribeToken is asked on every subscribe, and its token sent with the frame", async () => {
  const asked = [];
  const getSubscribeToken = async (channel) => {
    asked.push(channel);
    return channel.startsWith("private:") ? `sub-${channel}-${asked.length}` : null;
  };
  const h = hub("ws://a/ws", { getSubscribeToken });
  const refusals = [];
  h.subscribe("private:1", { onError: (e) => refusals.push(e.code) });
  h.subscribe("room:1");
  const a = await socket(1);
  a.open();
  for (let i = 0; i < 100 && a.sent.filter((f) => f.type === "subscribe").length < 2; i++) await sleep(2);
  const [priv, pub1] = a.sent.filter((f) => f.type === "subscribe");
  assert.equal(priv.channel, "private:1");
  assert.equal(priv.token, "sub-private:1-1");
  assert.equal(pub1.token, undefined, "no token for a public channel");
  a.frame({ type: "subscribed", id: priv.id, channel: "private:1", epoch: "E", offset: 1, recovered: true, publications: [] });
  a.drop();
  const b = await socket(2);
  b.open();
  for (let i = 0; i < 100 && b.sent.filter((f) => f.type === "subscribe").length < 2; i++) await sleep(2);
  const again = b.sent.find((f) => f.type === "subscribe" && f.channel === "private:1");
  assert.equal(again.token, "sub-private:1-3", "a fresh token on resubscribe");
  assert.deepEqual(again.recover, { epoch: "E", offset: 1 });
  b.frame({ type: "error", id: again.id, code: "token_expired", message: "m" });
  assert.deepEqual(refusals, ["token_expired"]);
  h.close();
});

test("over SSE, tokens ride in the stream's URL and a refresh is POSTed with the stream's id", async () => {
  FakeEventSource.all = [];
  const posted = [];
  globalThis.fetch = async (url, init) => {
    posted.push({ url: String(url), body: JSON.parse(init.body) });
    return { ok: true, status: 202, json: async () => ({ type: "refresh_sent" }) };
  };
  let issued = 0;
  const h = hub("ws://a/ws", {
    EventSource: FakeEventSource, fallbackAfter: 1, params: {}, refreshBefore: 980,
    getToken: async () => `t${++issued}`,
    getSubscribeToken: async (channel) => (channel.startsWith("private:") ? `s-${channel}` : null),
  });
  const errors = [];
  h.on("error", (e) => errors.push(e.code));
  h.subscribe("private:1");
  h.subscribe("room:1");
  (await socket(1)).drop();
  const es = await eventSource(1);
  assert.equal(es.url.searchParams.get("token"), "t2");
  assert.equal(es.url.searchParams.get("tokens"), "s-private:1", "only private channels' tokens");
  es.event("connected", { type: "connected", client: "n1/7", node: "n1", user: "alice", expires_in: 0.06 });
  for (let i = 0; i < 100 && !posted.length; i++) await sleep(5);
  assert.deepEqual(posted[0], { url: "http://a/sse/refresh", body: { client: "n1/7", token: "t3" } });
  // The stream confirms; the next refresh follows from its expires_in.
  es.event("refreshed", { type: "refreshed", expires_in: 0.06 });
  for (let i = 0; i < 100 && posted.length < 2; i++) await sleep(5);
  assert.equal(posted[1]?.body.token, "t4");
  assert.deepEqual(errors, []);
  h.close();
  delete globalThis.fetch;
});
