// The page the browser test loads: it imports the client from the node (same origin: the
// test's static server serves the node's /sessionhub.js), connects, subscribes, and records
// everything in `window.log` for run.mjs to read, and on screen for the screenshot.
import { connect } from "/sessionhub.js";

const log = { events: [], publications: {}, subscribed: [], recoveryFailed: [], errors: [] };
window.log = log;
let gate = null;

const $ = (id) => document.getElementById(id);
function line(list, text, cls) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  list.append(li);
}

function record(type, detail) {
  log.events.push({ type, ...detail, at: Date.now() });
  line($("events"), `${type} ${JSON.stringify(detail)}`, type === "recoveryfailed" ? "failed" : "");
  $("state").textContent = `${window.hub.state} ${window.hub.node ?? ""}`;
}

window.harness = {
  /** Connects to `urls` (an array rotated on reconnect, or with `gated` a function that waits
   * for `release()` while held) as `user` and subscribes to `channels`. */
  start({ urls, user, channels, gated }) {
    let next = 0;
    const url = gated
      ? async () => {
          if (gate) await gate.promise;
          return urls[next++ % urls.length];
        }
      : urls;
    const hub = connect(url, { params: { user } });
    window.hub = hub;
    for (const type of ["connected", "disconnected", "reconnecting", "recoveryfailed", "closed", "error"]) {
      hub.on(type, (detail) => record(type, detail));
    }
    for (const channel of channels) {
      log.publications[channel] = [];
      const section = document.createElement("section");
      section.innerHTML = `<h2></h2><ol></ol>`;
      section.querySelector("h2").textContent = channel;
      $("channels").append(section);
      const list = section.querySelector("ol");
      hub.subscribe(channel, {
        onPublication: (p) => {
          log.publications[channel].push(p);
          line(list, `#${p.offset} ${JSON.stringify(p.data)}`, p.recovered ? "recovered" : "");
        },
        onSubscribed: (info) => {
          log.subscribed.push(info);
          line(list, `subscribed at #${info.offset} recovered=${info.recovered}`, info.recovered ? "" : "failed");
        },
        onRecoveryFailed: (info) => {
          log.recoveryFailed.push(info);
          line(list, `recovery failed: reload state`, "failed");
        },
        onError: (e) => log.errors.push({ channel, code: e.code, message: e.message }),
      });
    }
  },
  /** Holds the next reconnect attempt (gated mode) until `release()`. */
  hold() {
    let resolve;
    gate = { promise: new Promise((r) => (resolve = r)) };
    gate.resolve = resolve;
  },
  release() {
    gate?.resolve();
    gate = null;
  },
  async publish(channel, data) {
    try {
      return { ok: await window.hub.publish(channel, data) };
    } catch (e) {
      return { error: e.code ?? String(e) };
    }
  },
};
$("state").textContent = "ready";
