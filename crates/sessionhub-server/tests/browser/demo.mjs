// Drives headless Chromium for crates/sessionhub-server/tests/demo_page.rs: several pages, each
// in a browser context of its own (so each has its own cookie jar: cookies ignore ports, and
// two users on 127.0.0.1 must not share a session).
//
//   node demo.mjs <artifacts dir>
//
// The wire, the launch, the loop and the pages are driver.mjs's.
import { join } from "node:path";
import { artifacts, log, Pages, serve } from "./driver.mjs";

const pages = new Pages();
const page = (name) => pages.get(name);
/** Uncaught exceptions per page. */
const pageErrors = new Map();

const ops = {
  async launch({ timeoutMs }) {
    return pages.launch(timeoutMs);
  },

  /** A new page in a fresh context (own cookies), loaded from `url`. */
  async open({ name, url, timeoutMs }) {
    const p = await pages.open(name, timeoutMs, { viewport: { width: 1100, height: 760 } });
    pageErrors.set(name, []);
    p.on("pageerror", (e) => {
      log(`[${name} uncaught]`, e.message);
      pageErrors.get(name).push(e.message);
    });
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
};

serve(ops, {
  shutdown: () => pages.shutdown(),
  bounded: true,
  onFailure: (op, id) => pages.screenshotAll(op, id),
});
