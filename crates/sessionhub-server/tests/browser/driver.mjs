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
import readline from "node:readline";

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
