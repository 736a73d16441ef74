// Drives headless Chromium for crates/sessionhub-server/tests/echo.rs: pages that run Laravel
// Echo on pusher-js, the browser builds of both as published on npm (pinned in
// package.json), each page in a context of its own so that each has its own session cookie.
//
//   node echo.mjs <artifacts dir>
//
// The wire, the launch and the loop are driver.mjs's.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { artifacts, launchOptions, log, serve, withTimeout } from "./driver.mjs";

// By path: laravel-echo's package exports do not name its browser build.
const modules = join(dirname(fileURLToPath(import.meta.url)), "node_modules");
const SCRIPTS = [
  join(modules, "pusher-js/dist/web/pusher.min.js"),
  join(modules, "laravel-echo/dist/echo.iife.js"),
];

let browser = null;
/** @type {Map<string, import("playwright-core").Page>} */
const pages = new Map();

function page(name) {
  const p = pages.get(name);
  if (!p) throw new Error(`no page ${name}`);
  return p;
}

const ops = {
  async launch({ timeoutMs }) {
    browser = await chromium.launch({ ...launchOptions, timeout: timeoutMs });
    return { version: browser.version() };
  },

  /** A new page in a fresh context, loaded from `url` (the server's origin), with pusher-js
   * and Laravel Echo loaded and `window.log` ready for the test's listeners. */
  async open({ name, url, timeoutMs }) {
    const context = await browser.newContext();
    const p = await context.newPage();
    p.setDefaultTimeout(timeoutMs);
    p.on("console", (m) => log(`[${name} ${m.type()}]`, m.text()));
    p.on("pageerror", (e) => log(`[${name} uncaught]`, e.message));
    p.on("websocket", (ws) => log(`[${name} ws open]`, ws.url()));
    pages.set(name, p);
    await p.goto(url, { timeout: timeoutMs });
    for (const path of SCRIPTS) await p.addScriptTag({ path });
    await p.evaluate(() => {
      window.log = [];
    });
    return { echo: await p.evaluate(() => typeof (window.Echo?.default ?? window.Echo)) };
  },

  /** Evaluates `code` (an expression; a promise is awaited) in the page; its JSON result. */
  async run({ name, code }) {
    return page(name).evaluate(code);
  },

  /** Waits until `expr` (evaluated in the page) is truthy. */
  async until({ name, expr, timeoutMs }) {
    await page(name).waitForFunction(expr, null, { timeout: timeoutMs, polling: 20 });
    return true;
  },
};

async function shutdown() {
  if (browser) {
    const closing = browser;
    browser = null;
    pages.clear();
    await withTimeout(closing.close(), 10_000, "closing Chromium").catch((e) => log(e.message));
  }
}

serve(ops, {
  shutdown,
  bounded: true,
  async onFailure(op, id) {
    for (const [name, p] of pages) {
      await p.screenshot({ path: join(artifacts, `failure-${op}-${id}-${name}.png`), timeout: 5_000 }).catch(() => {});
    }
  },
});
