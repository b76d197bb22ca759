// The agent's HTTP API as the UI uses it: JSON requests with the ACL token
// the user entered (kept in sessionStorage, so it leaves with the tab), and
// the event stream (/v1/cove/events, newline-delimited JSON) followed with
// automatic resumption from the last index seen.

export const token = () => sessionStorage.getItem("cove-token") || "";
export function setToken(value) {
  if (value) sessionStorage.setItem("cove-token", value);
  else sessionStorage.removeItem("cove-token");
}

function headers(extra = {}) {
  const t = token();
  return t ? { ...extra, "X-Consul-Token": t } : extra;
}

export async function api(path, { method = "GET", body, allow404 = false } = {}) {
  const resp = await fetch(path, { method, body, headers: headers(), cache: "no-store" });
  if (allow404 && resp.status === 404) return null;
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || (typeof data === "string" && data) || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SILENCE = 20000; // the agent sends a heartbeat every 15 s

// A Consul blocking query: resolves with the path's X-Consul-Index once it
// is past `index` (at once when index is 0), or after `wait` seconds.
export async function blockingIndex(path, index, signal, wait = 55) {
  const sep = path.includes("?") ? "&" : "?";
  const q = index ? `${sep}index=${index}&wait=${wait}s` : "";
  const resp = await fetch(`${path}${q}`, { headers: headers(), signal, cache: "no-store" });
  await resp.arrayBuffer();
  if (!resp.ok && resp.status !== 404) {
    const err = new Error(`HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return Number(resp.headers.get("X-Consul-Index") || 0);
}

export function follow({ onEvent, onOpen, onOffline, onDenied, waitDenied }) {
  let stopped = false;
  let ctl = null;
  let since = null;
  (async () => {
    let delay = 500;
    while (!stopped) {
      ctl = new AbortController();
      let timer = null;
      const arm = () => { clearTimeout(timer); timer = setTimeout(() => ctl.abort(), SILENCE); };
      try {
        arm();
        const q = since === null ? "" : `?since=${since}`;
        const resp = await fetch(`/v1/cove/events${q}`, { headers: headers(), signal: ctl.signal, cache: "no-store" });
        if (resp.status === 401 || resp.status === 403) {
          const body = await resp.json().catch(() => ({}));
          clearTimeout(timer);
          onDenied(body.error || `HTTP ${resp.status}`);
          // Without the stream, the view's own blocking query says when
          // to look again; then the stream is tried again (a new token).
          await waitDenied();
          continue;
        }
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        if (since === null) since = Number(resp.headers.get("X-Consul-Index") || 0);
        delay = 500;
        onOpen();
        const reader = resp.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          arm();
          buf += dec.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue; // heartbeat
            const ev = JSON.parse(line);
            since = Math.max(since, ev.index);
            onEvent(ev);
          }
        }
        throw new Error("the stream ended");
      } catch (err) {
        if (stopped) break;
        onOffline(err.name === "AbortError" ? "no heartbeat" : err.message);
        await sleep(delay);
        delay = Math.min(delay * 2, 4000);
      } finally {
        clearTimeout(timer);
      }
    }
  })();
  return { abort: () => { stopped = true; if (ctl) ctl.abort(); } };
}
