// What the Chromium drivers (run.mjs for tests/browser.rs, demo.mjs for tests/demo_page.rs)
// share: the artifacts directory, the log, how to launch Chromium, and the command loop.
//
//   node <driver>.mjs <artifacts dir>
//
// A driver reads one JSON command per line on stdin ({"id": n, "op": ..., ...}) and answers
// each with one JSON line on stdout ({"id": n, "ok": result} or {"id": n, "error": message}).
// Every wait is bounded by the command's timeoutMs. On stdin EOF it closes the browser and
// exits, so a test that dies leaves no Chromium behind. Uses Debian's /usr/bin/chromium:
// playwright-core never downloads a browser.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";

/** Where screenshots go (the driver's log is its stderr). */
export const artifacts = process.argv[2] ?? ".";
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
/** playwright-core's launch options for Debian's Chromium; add a timeout and the like. */
export const launchOptions = { executablePath: CHROMIUM, headless: true, args: FLAGS };

export const log = (...args) => console.error(new Date().toISOString(), ...args);

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Answers the commands on stdin, one at a time, in order.
 *
 * @param {Record<string, (command: object) => Promise<unknown>>} ops the driver's own
 *   commands; `close` (which calls `shutdown`) is added.
 * @param {object} options
 * @param {() => Promise<void>} options.shutdown closes the browser: on `close` and on EOF.
 * @param {(op: string, id: unknown) => Promise<void>} options.onFailure runs after a command
 *   failed (to take screenshots), before the error is answered.
 * @param {boolean} [options.bounded] also bound each command by its timeoutMs + 1 s.
 */
export function serve(ops, { shutdown, onFailure, bounded = false }) {
  const all = {
    ...ops,
    async close() {
      await shutdown();
      return true;
    },
  };
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
        if (!all[op]) throw new Error(`unknown op ${op}`);
        const work = all[op](command);
        const result = bounded ? await withTimeout(work, (command.timeoutMs ?? 20_000) + 1_000, op) : await work;
        reply = { id, ok: result ?? null };
      } catch (e) {
        log(`op ${op} failed:`, e.stack ?? e);
        await onFailure(op, id);
        reply = { id, error: String(e.message ?? e) };
      }
      process.stdout.write(JSON.stringify(reply) + "\n");
    });
  });
  input.on("close", () => {
    queue.then(shutdown).finally(() => process.exit(0));
  });
}

/**
 * Named pages, each in a browser context of its own (its own cookie jar: cookies ignore
 * ports, and two users on 127.0.0.1 must not share a session), for drivers of several pages
 * (demo.mjs, echo.mjs): the launch, the lookup, the screenshots of a failure, the shutdown.
 */
export class Pages {
  browser = null;
  /** @type {Map<string, import("playwright-core").Page>} */
  pages = new Map();

  /** Starts Chromium; its version. */
  async launch(timeoutMs) {
    this.browser = await chromium.launch({ ...launchOptions, timeout: timeoutMs });
    return { version: this.browser.version() };
  }

  /** A new page `name` in a fresh context, its console and WebSockets in the log. */
  async open(name, timeoutMs, contextOptions = {}) {
    const context = await this.browser.newContext(contextOptions);
    const p = await context.newPage();
    p.setDefaultTimeout(timeoutMs);
    p.on("console", (m) => log(`[${name} ${m.type()}]`, m.text()));
    p.on("websocket", (ws) => {
      log(`[${name} ws open]`, ws.url());
      ws.on("close", () => log(`[${name} ws closed]`, ws.url()));
    });
    this.pages.set(name, p);
    return p;
  }

  /** Page `name`, or an error that names it. */
  get(name) {
    const p = this.pages.get(name);
    if (!p) throw new Error(`no page ${name}`);
    return p;
  }

  /** Screenshots of every page after command `op` (`id`) failed. */
  async screenshotAll(op, id) {
    for (const [name, p] of this.pages) {
      await p.screenshot({ path: join(artifacts, `failure-${op}-${id}-${name}.png`), timeout: 5_000 }).catch(() => {});
    }
  }

  /** Closes Chromium (every page with it). */
  async shutdown() {
    if (this.browser) {
      const closing = this.browser;
      this.browser = null;
      this.pages.clear();
      await withTimeout(closing.close(), 10_000, "closing Chromium").catch((e) => log(e.message));
    }
  }
}
