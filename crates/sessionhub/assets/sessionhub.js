/**
 * sessionhub browser client for protocol v1 (`GET /ws`, specified in docs/protocol.md).
 * An ES module without dependencies or build step:
 *
 *   import { connect } from "/sessionhub.js";
 *   const hub = connect(["wss://a.example/ws", "wss://b.example/ws"], { params: { user: "alice" } });
 *   hub.on("connected", ({ node }) => console.log("on", node));
 *   const sub = hub.subscribe("user:alice", { onPublication: (p) => show(p.data) });
 *   await hub.publish("room:1", { text: "hi" });
 *
 * It reconnects by itself (jittered exponential backoff), resubscribes every channel from the
 * last position it delivered, delivers what it missed in order before anything live, never
 * delivers an offset twice, and tells the app when recovery is impossible so it can reload.
 * Where WebSockets cannot get through (every attempt fails before the greeting), it falls
 * back to Server-Sent Events (`GET /sse`, publishing with `POST /sse/publish`) with the same
 * guarantees; the API does not change.
 * @module sessionhub
 */

/** @typedef {{epoch: string, offset: number}} StreamPosition */
/**
 * @typedef {object} Publication
 * @property {string} channel
 * @property {string} epoch
 * @property {number} offset position in the channel's history (0: a channel without history)
 * @property {any} data the published JSON value
 * @property {boolean} recovered whether it came from history after a reconnect
 */
/**
 * @typedef {object} SubscribeOptions
 * @property {(p: Publication) => void} [onPublication] every publication, in order, once
 * @property {(info: {channel: string, epoch: string, offset: number, recovered: boolean, resubscribed: boolean, presence?: {user: string, connections: number}[]}) => void} [onSubscribed]
 *   each time the server confirms the subscription (first time and after every reconnect);
 *   on a presence channel, `presence` lists who is there
 * @property {(event: {type: "join" | "leave", channel: string, user: string}) => void} [onPresence]
 *   on a presence channel: a user's first connection joined, or their last one left
 * @property {(info: {channel: string, byServer: boolean}) => void} [onUnsubscribed] the server
 *   API unsubscribed the connection (the app's own `unsubscribe()` does not call it)
 * @property {(info: {channel: string, epoch: string, offset: number, since: StreamPosition}) => void} [onRecoveryFailed]
 *   what was missed is gone (history too short, or a new epoch): reload the channel's state
 * @property {(error: Error & {code: string}) => void} [onError] the server refused the subscription
 * @property {StreamPosition} [since] recover from this position on the first subscribe too
 */
/**
 * @typedef {object} Options
 * @property {object | (() => object | Promise<object>)} [params] query parameters added to
 *   every URL, e.g. `{user: "alice"}` (open mode) or `async () => ({token: await fresh()})`
 * @property {number} [minDelay=100] first reconnect delay, ms (each delay is ±50% jittered)
 * @property {number} [maxDelay=10000] the delay doubles up to this, ms
 * @property {number} [pingInterval=25000] how often to ping the server, ms (0: never)
 * @property {number} [pongTimeout=10000] silence after a ping that counts as a dead link, ms
 * @property {number} [connectTimeout=10000] an attempt without a greeting by then failed, ms
 * @property {typeof WebSocket} [WebSocket] constructor to use instead of the global one
 * @property {number} [fallbackAfter=2] WebSocket attempts in a row that end before the greeting
 *   after which the client switches to SSE for good (0: never)
 * @property {(wsUrl: string) => string} [sseUrl] the `/sse` URL for a `/ws` URL (default: the
 *   same URL with the last path segment `sse`)
 * @property {typeof EventSource} [EventSource] constructor to use instead of the global one
 * @property {() => string | Promise<string>} [getToken] token mode: a fresh connection token
 *   (a JWT from the app's backend), asked for before every connect (sent as `?token=`) and
 *   again before the connection's token expires, to send a `refresh` frame (the server says
 *   when: `expires_in` in `connected` and `refreshed`); a refused refresh is an `error` event
 * @property {number} [refreshBefore=10000] refresh this long before the token expires, ms (at
 *   most a third of the token's remaining life)
 * @property {(channel: string) => string | null | undefined | Promise<string | null | undefined>} [getSubscribeToken]
 *   a subscribe token for `channel` if it is private (`--private-channels`), asked for on
 *   every subscribe, including after a reconnect; null or undefined for other channels
 * @property {(channel: string) => SubscribeOptions | undefined} [onServerSubscribe] the server
 *   API subscribed this connection to `channel` (`POST /api/users/{id}/subscribe`): return the
 *   callbacks for it. The subscription then behaves as one the app made (recovery, resubscribe
 *   after a reconnect) until the app or the server API unsubscribes it.
 */

/**
 * Opens a connection at once. `url` is the `/ws` endpoint (ws:, wss:, http:, https: or
 * relative to the page), a list of them (each attempt, including every reconnect, takes the
 * next one, so a client whose node dies moves to the next node), or a function
 * `(attempt) => url` (may return a Promise).
 * @param {string | string[] | ((attempt: number) => string | Promise<string>)} url
 * @param {Options} [options]
 * @returns {SessionHub}
 */
export function connect(url, options) {
  return new SessionHub(url, options);
}

/** One channel the app subscribed to; {@link SessionHub#subscribe} returns it. */
export class Subscription {
  /** @param {SessionHub} hub @param {string} channel @param {SubscribeOptions} options */
  constructor(hub, channel, options) {
    this.hub = hub;
    this.channel = channel;
    this.options = options;
    /** @type {StreamPosition | null} the last position delivered (or confirmed) */
    this.position = options.since ? { ...options.since } : null;
    /** @type {"subscribing" | "subscribed" | "unsubscribed"} */
    this.state = "subscribing";
  }

  /** Leaves the channel; no callback fires after this returns. */
  unsubscribe() {
    this.hub._unsubscribe(this);
  }
}

/** A connection to sessionhub that survives node failures. Create it with {@link connect}. */
export class SessionHub {
  /** @param {Parameters<typeof connect>[0]} url @param {Options} [options] */
  constructor(url, options = {}) {
    this.options = {
      minDelay: 100, maxDelay: 10000, pingInterval: 25000, pongTimeout: 10000, connectTimeout: 10000,
      fallbackAfter: 2, refreshBefore: 10000, ...options,
    };
    /** @type {"websocket" | "sse"} how the client reaches the server now */
    this.transport = "websocket";
    this._failedOpens = 0; // WebSocket attempts in a row that ended before the greeting
    /** @type {"connecting" | "connected" | "closed"} */
    this.state = "connecting";
    /** @type {string | null} the node serving this connection */
    this.node = null;
    this._url = url;
    this._urlIndex = 0;
    this._attempt = 0;
    this._nextId = 1;
    this._listeners = new Map();
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    this._requests = new Map(); // id -> {sub, recover}, {publish} or {} (ping, unsubscribe)
    this._outbox = []; // publishes waiting for a connection
    this._open();
  }

  /**
   * Listens to `connected` ({node, client, user, url}), `disconnected` ({code, reason,
   * reconnect}), `reconnecting` ({attempt, delay}), `recoveryfailed` ({channel, epoch,
   * offset, since}), `error` ({code, message}: an error frame for no request) or `closed`.
   * @param {string} type @param {(detail: any) => void} listener
   * @returns {() => void} removes the listener
   */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this._listeners.get(type).delete(listener);
  }

  /**
   * Joins `channel` now and after every reconnect, recovering what was missed.
   * @param {string} channel @param {SubscribeOptions} [options]
   * @returns {Subscription}
   */
  subscribe(channel, options = {}) {
    if (this._subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this.state === "connected") this._sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes `data` (any JSON value). Sent once connected; resent after a reconnect if it was
   * not confirmed, with the same idempotency key, so it is published once.
   * @param {string} channel @param {any} data
   * @param {{idempotencyKey?: string}} [options]
   * @returns {Promise<{channel: string, epoch: string, offset: number, duplicate: boolean}>}
   *   rejected with an Error carrying the server's `code` if it refuses
   */
  publish(channel, data, options = {}) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed") return reject(Object.assign(new Error("closed"), { code: "closed" }));
      const key = options.idempotencyKey ?? randomKey();
      this._outbox.push({ channel, data, key, resolve, reject });
      this._flush();
    });
  }

  /** Closes the connection for good: no reconnect; unconfirmed publishes are rejected. */
  close() {
    if (this.state === "closed") return;
    this.state = "closed";
    clearTimeout(this._timer);
    clearTimeout(this._refresher);
    if (this._ws) this._lost(this._ws, 1000, "closed by the client", false);
    this._stop();
  }

  // ---- connection lifecycle ----

  async _open() {
    let url;
    try {
      url = await this._nextUrl();
    } catch (e) {
      if (this.state !== "closed") this._schedule();
      return;
    }
    if (this.state === "closed") return;
    const Socket = this.options.WebSocket || globalThis.WebSocket;
    const ws = this.transport === "sse" ? new SseLink(url, this) : new Socket(url);
    this._ws = ws;
    this._said = null;
    this._wsUrl = url;
    this._greeting = setTimeout(() => this._lost(ws, 1006, "no greeting in time"), this.options.connectTimeout);
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._lost(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
  }

  async _nextUrl() {
    const u = this._url;
    const raw = typeof u === "function" ? await u(this._attempt)
      : Array.isArray(u) ? u[this._urlIndex++ % u.length] : u;
    const p = this.options.params;
    const params = { ...(typeof p === "function" ? await p() : p) };
    if (this.options.getToken) params.token = await this.options.getToken();
    // A stream's channels are fixed when it opens, so it takes their subscribe tokens then.
    if (this.transport === "sse" && this.options.getSubscribeToken) {
      const tokens = await Promise.all([...this._subs.keys()].map((c) => this.options.getSubscribeToken(c)));
      if (tokens.some(Boolean)) params.tokens = tokens.filter(Boolean).join(",");
    }
    const url = new URL(raw, globalThis.location?.href);
    url.protocol = url.protocol.replace(/^http/, "ws");
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    return url.href;
  }

  /** The socket `ws` ended (or is given up on); decide whether and when to try again. */
  _lost(ws, code, reason, reconnect = true) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onmessage = ws.onclose = null;
    if (ws.readyState <= 1) try { ws.close(1000); } catch { /* already gone */ }
    clearTimeout(this._greeting);
    clearTimeout(this._refresher);
    clearInterval(this._pinger);
    clearTimeout(this._pongDeadline);
    this._pongDeadline = undefined;
    const said = this._said; // the server's `disconnect` frame, if it sent one
    if (said) {
      code = said.code;
      reason = said.reason;
      reconnect &&= said.reconnect;
    }
    const wasConnected = this._connected;
    this._connected = false;
    const { fallbackAfter } = this.options;
    const sse = this.options.EventSource || globalThis.EventSource;
    if (!wasConnected && this.transport === "websocket" && ++this._failedOpens >= fallbackAfter && fallbackAfter && sse) {
      this.transport = "sse";
    }
    if (this.state === "connected") this.state = "connecting";
    for (const sub of this._subs.values()) sub.state = "subscribing";
    // Unconfirmed publishes go out again on the next connection (same idempotency key).
    const unconfirmed = [...this._requests.values()].filter((r) => r.publish).map((r) => r.publish);
    this._outbox.unshift(...unconfirmed);
    this._requests.clear();
    if (wasConnected) this._emit("disconnected", { code, reason, reconnect });
    if (this.state === "closed") return;
    if (!reconnect) {
      this.state = "closed";
      this._stop();
      return;
    }
    this._schedule();
  }

  _schedule() {
    const attempt = ++this._attempt;
    const { minDelay, maxDelay } = this.options;
    const base = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt - 1, 30));
    const delay = Math.round(base * (0.5 + Math.random()));
    this._emit("reconnecting", { attempt, delay });
    this._timer = setTimeout(() => this._open(), delay);
  }

  /** Rejects what can no longer be sent; fires `closed`. */
  _stop() {
    const error = Object.assign(new Error("closed"), { code: "closed" });
    for (const entry of this._outbox.splice(0)) entry.reject(error);
    this._emit("closed", {});
  }

  _send(frame) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(frame));
  }

  _heartbeat() {
    const { pingInterval, pongTimeout } = this.options;
    if (!pingInterval) return;
    const ws = this._ws;
    this._pinger = setInterval(() => {
      this._request({ type: "ping" });
      this._pongDeadline ??= setTimeout(() => this._lost(ws, 1006, "no answer to ping"), pongTimeout);
    }, pingInterval);
  }

  // ---- frames ----

  _receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    clearTimeout(this._pongDeadline);
    this._pongDeadline = undefined;
    // The server answers every frame once, in order: an error without an id (a frame it could
    // not parse) answers the oldest request still waiting.
    const id = msg.id ?? (msg.type === "error" ? this._requests.keys().next().value : undefined);
    const request = this._requests.get(id);
    this._requests.delete(id);
    switch (msg.type) {
      case "connected":
        clearTimeout(this._greeting);
        this.state = "connected";
        this._connected = true;
        this._attempt = 0;
        this._failedOpens = 0;
        this.node = msg.node;
        const { transport } = this;
        this._emit("connected", { node: msg.node, client: msg.client, user: msg.user, url: this._wsUrl, transport });
        this._heartbeat();
        this._scheduleRefresh(msg.expires_in);
        for (const sub of this._subs.values()) this._sendSubscribe(sub);
        this._flush();
        break;
      case "subscribed":
        if (request?.sub) this._subscribed(request, msg);
        else if (msg.id === undefined && !this._subs.has(msg.channel)) this._serverSubscribed(msg);
        break;
      case "unsubscribed": {
        // Without an id: the server API took the connection out of the channel.
        const sub = msg.id === undefined ? this._subs.get(msg.channel) : undefined;
        if (sub) {
          this._subs.delete(sub.channel);
          sub.state = "unsubscribed";
          call(sub.options.onUnsubscribed, { channel: sub.channel, byServer: true });
        }
        break;
      }
      case "publication": {
        const sub = this._subs.get(msg.channel);
        if (sub?.state === "subscribed") this._deliver(sub, msg, false);
        break;
      }
      case "join":
      case "leave": {
        const sub = this._subs.get(msg.channel);
        if (sub?.state === "subscribed") call(sub.options.onPresence, { type: msg.type, channel: msg.channel, user: msg.user });
        break;
      }
      case "refreshed":
        this._scheduleRefresh(msg.expires_in);
        break;
      case "published":
        request?.publish?.resolve({ channel: msg.channel, epoch: msg.epoch, offset: msg.offset, duplicate: !!msg.duplicate });
        break;
      case "error":
        this._refused(request, Object.assign(new Error(msg.message), { code: msg.code }));
        break;
      case "disconnect":
        this._said = msg;
        break;
      default: // pong: nothing to do
    }
  }

  /** Sends `frame` with a fresh id, remembering `entry` until the answer. */
  _request(frame, entry = {}) {
    const id = this._nextId++;
    this._requests.set(id, entry);
    this._send({ ...frame, id });
  }

  async _sendSubscribe(sub) {
    const recover = sub.position ? { ...sub.position } : undefined;
    sub.state = "subscribing";
    let token;
    if (this.options.getSubscribeToken) {
      const ws = this._ws;
      try {
        token = await this.options.getSubscribeToken(sub.channel);
      } catch (e) {
        // The app could not say: as a refusal, so the subscription does not hang.
        return this._refused({ sub }, Object.assign(new Error(String(e?.message ?? e)), { code: "token_unavailable" }));
      }
      if (this._ws !== ws || this._subs.get(sub.channel) !== sub) return; // gone meanwhile
    }
    this._request({ type: "subscribe", channel: sub.channel, ...(recover && { recover }), ...(token && { token }) }, { sub, recover });
  }

  /** Sends a `refresh` with a fresh token before the connection's token, ending in
   * `expiresIn` seconds, runs out. */
  _scheduleRefresh(expiresIn) {
    clearTimeout(this._refresher);
    if (expiresIn === undefined || !this.options.getToken) return;
    const left = expiresIn * 1000;
    const delay = Math.max(0, left - Math.min(this.options.refreshBefore, left / 3));
    const ws = this._ws;
    this._refresher = setTimeout(async () => {
      let token;
      try {
        token = await this.options.getToken();
      } catch (e) {
        return this._emit("error", { code: "token_unavailable", message: String(e?.message ?? e) });
      }
      if (this._ws === ws && this.state === "connected") this._request({ type: "refresh", token });
    }, delay);
  }

  /** The server API subscribed the connection: a subscription like the app's own from now on. */
  _serverSubscribed(msg) {
    const options = this.options.onServerSubscribe?.(msg.channel) ?? {};
    const sub = new Subscription(this, msg.channel, options);
    this._subs.set(msg.channel, sub);
    this._subscribed({ sub, recover: undefined }, msg);
  }

  _subscribed({ sub, recover }, msg) {
    if (this._subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
    const { channel, epoch, offset, recovered, presence } = msg;
    sub.state = "subscribed";
    call(sub.options.onSubscribed, { channel, epoch, offset, recovered, resubscribed: !!recover, ...(presence && { presence }) });
    if (recovered) {
      for (const p of msg.publications) this._deliver(sub, { channel, epoch, offset: p.offset, data: p.data }, true);
      const at = sub.position;
      if (!at || at.epoch !== epoch || at.offset < offset) sub.position = { epoch, offset };
    } else {
      // Nothing was delivered: live publications continue from the channel's current top.
      sub.position = { epoch, offset };
      const info = { channel, epoch, offset, since: recover };
      if (this._subs.get(channel) === sub) call(sub.options.onRecoveryFailed, info);
      this._emit("recoveryfailed", info);
    }
  }

  /** Delivers `p` unless its offset was delivered already in its epoch. */
  _deliver(sub, p, recovered) {
    if (p.offset !== 0) {
      const at = sub.position;
      if (at && at.epoch === p.epoch && p.offset <= at.offset) return;
      sub.position = { epoch: p.epoch, offset: p.offset };
    }
    if (sub.state !== "subscribed" || this._subs.get(sub.channel) !== sub) return;
    call(sub.options.onPublication, { channel: p.channel, epoch: p.epoch, offset: p.offset, data: p.data, recovered });
  }

  _refused(request, error) {
    if (request?.publish) return request.publish.reject(error);
    const sub = request?.sub;
    if (!sub) return this._emit("error", { code: error.code, message: error.message });
    if (this._subs.get(sub.channel) !== sub) return;
    if (error.code === "broker_unavailable") {
      // The node's broker link is down: try again later on this connection, position kept
      // (a reconnect meanwhile resubscribes anyway).
      const ws = this._ws;
      const retry = () => this._ws === ws && this._subs.get(sub.channel) === sub && this._sendSubscribe(sub);
      setTimeout(retry, this.options.minDelay * (5 + 10 * Math.random()));
      return;
    }
    this._subs.delete(sub.channel);
    sub.state = "unsubscribed";
    call(sub.options.onError, error);
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    sub.state = "unsubscribed";
    if (this.state === "connected") this._request({ type: "unsubscribe", channel: sub.channel });
  }

  _flush() {
    if (this.state !== "connected") return;
    for (const entry of this._outbox.splice(0)) {
      const { channel, data, key } = entry;
      this._request({ type: "publish", channel, data, idempotency_key: key }, { publish: entry });
    }
  }

  _emit(type, detail) {
    for (const listener of this._listeners.get(type) || []) call(listener, detail);
  }
}

/**
 * Protocol v1 over Server-Sent Events, behind the few members of a WebSocket the hub uses
 * (`readyState`, `send`, `close`, `onmessage`, `onclose`), so the hub's state machine runs
 * unchanged. The stream's channels are fixed when it opens: the hub's subscriptions, each
 * recovering from the hub's position (passed as `lastEventId`, in the server's id format). A
 * `subscribe` for a channel the stream lacks ends the link, and the hub's reconnect opens one
 * with it. `ping` and `unsubscribe` are answered here; `publish` goes to `POST /sse/publish`.
 * The EventSource never reconnects by itself: every end goes through the hub's backoff and
 * URL rotation, as a closed WebSocket does.
 */
class SseLink {
  /** @param {string} wsUrl the WebSocket URL the hub would have used @param {SessionHub} hub */
  constructor(wsUrl, hub) {
    this.readyState = 0;
    this.onmessage = this.onclose = this.onerror = null;
    const { sseUrl } = hub.options;
    const url = new URL(sseUrl ? sseUrl(wsUrl) : new URL("sse", wsUrl).href);
    url.protocol = url.protocol.replace(/^ws/, "http");
    for (const [k, v] of new URL(wsUrl).searchParams) url.searchParams.set(k, v);
    this._publishUrl = new URL(url);
    this._publishUrl.pathname += "/publish";
    this._refreshUrl = new URL(url);
    this._refreshUrl.pathname += "/refresh";
    this._refreshUrl.search = "";
    this._channels = [...hub._subs.keys()];
    const positions = [...hub._subs.values()]
      .filter((sub) => sub.position?.epoch)
      .map((sub) => `${sub.channel}=${sub.position.epoch}:${sub.position.offset}`);
    if (this._channels.length) url.searchParams.set("channels", this._channels.join(","));
    if (positions.length) url.searchParams.set("lastEventId", positions.sort().join(","));
    this._pending = new Map(); // channel -> id of the hub's subscribe frame
    const Source = hub.options.EventSource || globalThis.EventSource;
    // Opened after the hub has set the handlers.
    setTimeout(() => this._start(Source, url.href));
  }

  _start(Source, url) {
    if (this.readyState === 3) return;
    if (!this._channels.length) {
      // Nothing to stream (a stream needs a channel): connected for publishing only.
      this.readyState = 1;
      return this._reply({ type: "connected", client: null, node: null, user: null });
    }
    // With credentials: a page on another (allowed) origin sends its session cookie too.
    const es = new Source(url, { withCredentials: true });
    this._es = es;
    for (const type of ["connected", "subscribed", "unsubscribed", "publication", "join", "leave", "disconnect", "refreshed"]) {
      es.addEventListener(type, (event) => this._event(type, event.data));
    }
    es.onerror = () => this._end(1006, "stream ended");
  }

  _event(type, data) {
    if (this.readyState === 3) return;
    if (type === "connected") {
      this.readyState = 1;
      this._client = JSON.parse(data).client;
    }
    if (type === "refreshed" && this._refreshId !== undefined) {
      // The stream's confirmation of the hub's `refresh` (sent by POST /sse/refresh).
      data = JSON.stringify({ ...JSON.parse(data), id: this._refreshId });
      this._refreshId = undefined;
    }
    if (type === "subscribed") {
      // The server subscribed every channel at once; each answers the hub's own request.
      const msg = JSON.parse(data);
      // Not asked for here: the server API subscribed the stream (the hub sees it so too).
      if (!this._pending.has(msg.channel)) return this.onmessage?.({ data });
      msg.id = this._pending.get(msg.channel);
      this._pending.delete(msg.channel);
      data = JSON.stringify(msg);
    }
    this.onmessage?.({ data });
  }

  send(text) {
    const frame = JSON.parse(text);
    switch (frame.type) {
      case "subscribe":
        if (!this._channels.includes(frame.channel)) return this._end(1006, "channels changed");
        this._pending.set(frame.channel, frame.id);
        break;
      case "unsubscribe":
        this._reply({ type: "unsubscribed", id: frame.id, channel: frame.channel });
        break;
      case "ping":
        this._reply({ type: "pong", id: frame.id });
        break;
      case "publish":
        this._publish(frame);
        break;
      case "refresh":
        this._refresh(frame);
        break;
      default:
    }
  }

  async _publish(frame) {
    let reply;
    try {
      const response = await fetch(this._publishUrl, {
        method: "POST",
        credentials: "include",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(frame),
      });
      const body = await response.json();
      const { code, message } = body.error ?? {};
      reply = response.ok ? body : { type: "error", id: frame.id, code, message };
    } catch {
      // Unanswered: the hub sends it again (same idempotency key) on the next link.
      return this._end(1006, "publish failed");
    }
    if (this.readyState !== 3) this.onmessage?.({ data: JSON.stringify(reply) });
  }

  /** A stream cannot send `refresh`: POST it with the stream's id; the stream confirms. */
  async _refresh(frame) {
    this._refreshId = frame.id;
    try {
      const response = await fetch(this._refreshUrl, {
        method: "POST",
        credentials: "include",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ client: this._client, token: frame.token }),
      });
      if (response.ok) return;
      const { code, message } = (await response.json()).error ?? {};
      this._refreshId = undefined;
      this._reply({ type: "error", id: frame.id, code, message });
    } catch {
      // Unanswered: the token still expires, and the reconnect asks for a fresh one.
      this._refreshId = undefined;
      this._reply({ type: "error", id: frame.id, code: "refresh_failed", message: "POST /sse/refresh failed" });
    }
  }

  /** A frame from "the server" that this link answers itself, after the current call. */
  _reply(frame) {
    setTimeout(() => this.readyState !== 3 && this.onmessage?.({ data: JSON.stringify(frame) }));
  }

  _end(code, reason) {
    if (this.readyState === 3) return;
    this.close();
    setTimeout(() => this.onclose?.({ code, reason }));
  }

  close() {
    this.readyState = 3;
    this._es?.close();
  }
}

/** Calls an app callback; an exception in it is reported, never breaks the client. */
function call(fn, arg) {
  if (!fn) return;
  try {
    fn(arg);
  } catch (e) {
    setTimeout(() => { throw e; });
  }
}

/** 128 random bits as hex (getRandomValues works outside secure contexts too). */
function randomKey() {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
