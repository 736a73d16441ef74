// Drives headless Chromium for crates/sessionhub-server/tests/browser.rs.
//
//   node run.mjs <artifacts dir>
//
// Reads one JSON command per line on stdin ({"id": n, "op": ..., ...}) and answers each with
// one JSON line on stdout ({"id": n, "ok": result} or {"id": n, "error": message}). Every wait
// is bounded by the command's timeoutMs. On stdin EOF it closes the browser and exits, so a
// test that dies leaves no Chromium behind. Uses Debian's /usr/bin/chromium: playwright-core
// never downloads a browser.
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";

const artifacts = process.argv[2] ?? ".";
mkdirSync(artifacts, { recursive: true });
const CHROMIUM = process.env.SESSIONHUB_CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let context = null;
let page = null;
let profile = null;

const log = (...args) => console.error(new Date().toISOString(), ...args);

const ops = {
  /** Starts Chromium with a fresh profile (--user-data-dir). */
  async launch() {
    profile = mkdtempSync(join(tmpdir(), "sessionhub-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS,
      timeout: 30_000,
      viewport: { width: 1200, height: 900 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on("console", (m) => log(`[page ${m.type()}]`, m.text()));
    page.on("pageerror", (e) => log("[page error]", e.message));
    page.on("websocket", (ws) => {
      log("[ws open]", ws.url());
      ws.on("close", () => log("[ws closed]", ws.url()));
    });
    return { version: context.browser()?.version() ?? "unknown" };
  },

  /** Loads the test page and starts the client; waits for the greeting and every subscription. */
  async open({ url, options, timeoutMs }) {
    await page.goto(url, { timeout: timeoutMs });
    await page.waitForFunction(() => window.harness, null, { timeout: timeoutMs });
    await page.evaluate((o) => window.harness.start(o), options);
    await page.waitForFunction(
      (n) => window.hub.state === "connected" && window.log.subscribed.length >= n,
      options.channels.length,
      { timeout: timeoutMs },
    );
    return { node: await page.evaluate(() => window.hub.node) };
  },

  /** Waits until `channel` has delivered at least `count` publications. */
  async waitPublications({ channel, count, timeoutMs }) {
    await page.waitForFunction(
      ([c, n]) => window.log.publications[c].length >= n,
      [channel, count],
      { timeout: timeoutMs, polling: 20 },
    );
    return true;
  },

  /** Waits until the client fired `type` at least `count` times. */
  async waitEvent({ type, count, timeoutMs }) {
    await page.waitForFunction(
      ([t, n]) => window.log.events.filter((e) => e.type === t).length >= n,
      [type, count],
      { timeout: timeoutMs, polling: 20 },
    );
    return true;
  },

  /** Waits until `count` subscriptions have been confirmed in all (initial + resubscribes). */
  async waitSubscribed({ count, timeoutMs }) {
    await page.waitForFunction((n) => window.log.subscribed.length >= n, count, {
      timeout: timeoutMs,
      polling: 20,
    });
    return true;
  },

  async hold() {
    return page.evaluate(() => window.harness.hold());
  },

  async release() {
    return page.evaluate(() => window.harness.release());
  },

  /** Publishes from the page; {ok: receipt} or {error: code}. */
  async publish({ channel, data, timeoutMs }) {
    return withTimeout(
      page.evaluate(([c, d]) => window.harness.publish(c, d), [channel, data]),
      timeoutMs,
      "publish",
    );
  },

  /** Everything the page recorded. */
  async log() {
    return page.evaluate(() => window.log);
  },

  async screenshot({ name }) {
    const path = join(artifacts, name);
    await page.screenshot({ path, fullPage: true, timeout: 10_000 });
    return { path };
  },

  async close() {
    await shutdown();
    return true;
  },
};

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function shutdown() {
  if (context) {
    const closing = context;
    context = null;
    await withTimeout(closing.close(), 10_000, "closing Chromium").catch((e) => log(e.message));
  }
  if (profile) {
    rmSync(profile, { recursive: true, force: true });
    profile = null;
  }
}

const input = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
input.on("line", (text) => {
  queue = queue.then(async () => {
    let command;
    try {
      command = JSON.parse(text);
    } catch {
      return;
    }
    const { id, op } = command;
    let reply;
    try {
      if (!ops[op]) throw new Error(`unknown op ${op}`);
      reply = { id, ok: (await ops[op](command)) ?? null };
    } catch (e) {
      log(`op ${op} failed:`, e.stack ?? e);
      if (page && op !== "close") {
        await page
          .screenshot({ path: join(artifacts, `failure-${op}-${id}.png`), timeout: 5_000 })
          .catch(() => {});
      }
      reply = { id, error: String(e.message ?? e) };
    }
    process.stdout.write(JSON.stringify(reply) + "\n");
  });
});
input.on("close", () => {
  queue.then(shutdown).finally(() => process.exit(0));
});
