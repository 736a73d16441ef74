// Drives headless Chromium for crates/sessionhub-server/tests/browser.rs: one page, the client's
// test harness (index.html, page.mjs).
//
//   node run.mjs <artifacts dir>
//
// The wire, the launch and the loop are driver.mjs's.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { artifacts, launchOptions, log, serve, withTimeout } from "./driver.mjs";

let context = null;
let page = null;
let profile = null;

const ops = {
  /** Starts Chromium with a fresh profile (--user-data-dir). */
  async launch() {
    profile = mkdtempSync(join(tmpdir(), "sessionhub-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      ...launchOptions,
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
};

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

serve(ops, {
  shutdown,
  async onFailure(op, id) {
    if (page && op !== "close") {
      await page.screenshot({ path: join(artifacts, `failure-${op}-${id}.png`), timeout: 5_000 }).catch(() => {});
    }
  },
});
