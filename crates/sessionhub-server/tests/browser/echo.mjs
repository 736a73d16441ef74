// Drives headless Chromium for crates/sessionhub-server/tests/echo.rs: pages that run Laravel
// Echo on pusher-js, the browser builds of both as published on npm (pinned in
// package.json), each page in a context of its own so that each has its own session cookie.
//
//   node echo.mjs <artifacts dir>
//
// The wire, the launch, the loop and the pages are driver.mjs's.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { log, Pages, serve } from "./driver.mjs";

// By path: laravel-echo's package exports do not name its browser build.
const modules = join(dirname(fileURLToPath(import.meta.url)), "node_modules");
const SCRIPTS = [
  join(modules, "pusher-js/dist/web/pusher.min.js"),
  join(modules, "laravel-echo/dist/echo.iife.js"),
];

const pages = new Pages();
const page = (name) => pages.get(name);

const ops = {
  async launch({ timeoutMs }) {
    return pages.launch(timeoutMs);
  },

  /** A new page in a fresh context, loaded from `url` (the server's origin), with pusher-js
   * and Laravel Echo loaded and `window.log` ready for the test's listeners. */
  async open({ name, url, timeoutMs }) {
    const p = await pages.open(name, timeoutMs);
    p.on("pageerror", (e) => log(`[${name} uncaught]`, e.message));
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

serve(ops, {
  shutdown: () => pages.shutdown(),
  bounded: true,
  onFailure: (op, id) => pages.screenshotAll(op, id),
});
