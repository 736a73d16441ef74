// Drives headless Chromium for crates/sessionhub-server/tests/demo_page.rs: several pages, each
// in a browser context of its own (so each has its own cookie jar: cookies ignore ports, and
// two users on 127.0.0.1 must not share a session).
//
//   node demo.mjs <artifacts dir>
//
// Same wire as run.mjs: one JSON command per line on stdin ({"id": n, "op": ..., ...}), one
// JSON line per command on stdout ({"id": n, "ok": result} or {"id": n, "error": message}).
// Every wait is bounded by the command's timeoutMs. On stdin EOF it closes the browser and
// exits. Uses Debian's /usr/bin/chromium: playwright-core never downloads a browser.
import { mkdirSync } from "node:fs";
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

let browser = null;
/** @type {Map<string, import("playwright-core").Page>} */
const pages = new Map();
/** Uncaught exceptions per page. */
const pageErrors = new Map();

const log = (...args) => console.error(new Date().toISOString(), ...args);

function page(name) {
  const p = pages.get(name);
  if (!p) throw new Error(`no page ${name}`);
  return p;
}

const ops = {
  async launch({ timeoutMs }) {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: timeoutMs });
    return { version: browser.version() };
  },

  /** A new page in a fresh context (own cookies), loaded from `url`. */
  async open({ name, url, timeoutMs }) {
    const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    const p = await context.newPage();
    p.setDefaultTimeout(timeoutMs);
    p.on("console", (m) => log(`[${name} ${m.type()}]`, m.text()));
    pageErrors.set(name, []);
    p.on("pageerror", (e) => {
      log(`[${name} uncaught]`, e.message);
      pageErrors.get(name).push(e.message);
    });
    p.on("websocket", (ws) => {
      log(`[${name} ws open]`, ws.url());
      ws.on("close", () => log(`[${name} ws closed]`, ws.url()));
    });
    pages.set(name, p);
    const response = await p.goto(url, { timeout: timeoutMs });
    return {
      status: response.status(),
      node: response.headers()["x-sessionhub-node"] ?? null,
      title: await p.title(),
    };
  },

  async fill({ name, selector, value, timeoutMs }) {
    await page(name).fill(selector, value, { timeout: timeoutMs });
    return true;
  },

  async click({ name, selector, timeoutMs }) {
    await page(name).click(selector, { timeout: timeoutMs });
    return true;
  },

  /** Waits until the element's text contains `text`; returns its whole text. */
  async waitText({ name, selector, text, timeoutMs }) {
    await page(name).waitForFunction(
      ([s, t]) => document.querySelector(s)?.textContent.includes(t),
      [selector, text],
      { timeout: timeoutMs, polling: 20 },
    );
    return page(name).textContent(selector, { timeout: timeoutMs });
  },

  /** Waits until the page shows at least `count` received messages. */
  async waitMessages({ name, count, timeoutMs }) {
    await page(name).waitForFunction((n) => document.querySelectorAll("#messages li").length >= n, count, {
      timeout: timeoutMs,
      polling: 20,
    });
    return true;
  },

  /** The text of each selector (null if absent), the received messages (oldest first), whether
   * every input and button is labelled, and the page's uncaught exceptions. */
  async read({ name, selectors }) {
    const errors = pageErrors.get(name);
    const seen = await page(name).evaluate((list) => {
      const text = Object.fromEntries(list.map((s) => [s, document.querySelector(s)?.textContent ?? null]));
      const messages = [...document.querySelectorAll("#messages li")].reverse().map((li) => ({
        ...li.dataset,
        text: li.querySelector(".text")?.textContent ?? null,
        deliveredBy: li.querySelector(".delivered-by")?.textContent ?? null,
        recovered: li.classList.contains("recovered"),
      }));
      const labelled = [...document.querySelectorAll("input, button")].every(
        (e) => (e.labels?.length ?? 0) > 0 || e.textContent.trim() !== "",
      );
      return { text, messages, labelled };
    }, selectors);
    return { ...seen, errors };
  },

  /** Emulates `prefers-color-scheme` ("light" or "dark"). */
  async colorScheme({ name, scheme }) {
    await page(name).emulateMedia({ colorScheme: scheme });
    return true;
  },

  async screenshot({ name, file }) {
    const path = join(artifacts, file);
    await page(name).screenshot({ path, fullPage: true, timeout: 10_000 });
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
  if (browser) {
    const closing = browser;
    browser = null;
    pages.clear();
    await withTimeout(closing.close(), 10_000, "closing Chromium").catch((e) => log(e.message));
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
      const work = ops[op](command);
      reply = { id, ok: (await withTimeout(work, (command.timeoutMs ?? 20_000) + 1_000, op)) ?? null };
    } catch (e) {
      log(`op ${op} failed:`, e.stack ?? e);
      for (const [name, p] of pages) {
        await p
          .screenshot({ path: join(artifacts, `failure-${op}-${id}-${name}.png`), timeout: 5_000 })
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
