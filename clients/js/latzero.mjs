// LatZero for browsers and Node. In a page it talks to the server's WebSocket port (`latzero
// start --ws-port P`; docs/PROTOCOL.md §1.2); under Node it also takes a `latzero://` URL and
// talks to the server's Unix socket or TCP port (TLS with `latzeros://`) directly, as the Rust SDK
// and the Python client do — no `--ws-port` needed, and no bridge in the way. One ES module, no
// dependencies: WebSocket URLs use the global WebSocket (browsers, Node 22+; Node 20 with
// --experimental-websocket), or the constructor given as `options.WebSocket`.
//
//   import { connect } from "./latzero.mjs";
//   const lz = await connect("ws://127.0.0.1:45228", "page", { pools: ["demo"] });   // a page
//   const lz = await connect("latzero://node-app?pools=demo");                      // Node
//   lz.handle("greet", ({ data }) => `hello ${data}`);
//   console.log(await lz.call("demo", "double", { x: 21 }));
//
// `latzero://APP_ID` finds the server as the SDK does: the Unix socket of $LATZERO_DATA_DIR
// (else ~/.latzero) when it exists, else TCP $LATZERO_HOST:$LATZERO_PORT (else 127.0.0.1:45227);
// `@HOST:PORT`, `?socket=PATH`, `?pools=A,B` and `latzeros://APP_ID@HOST:PORT?fingerprint=SHA256`
// (or `?ca=PATH`) as PROTOCOL.md §12 gives them.
//
// Calls are correlated by id and time out (`timeoutMs`, default 30 s, passed to the server as
// the call's ttl); the server's errors reject with a LatZeroError carrying the wire `code`.
// `broadcast` calls every handler of a trigger at once; `unhandle` stops serving one; `emit`
// waits for the server's receipt, or with `{ confirm: false }` only for room in the connection
// (`writeBufferLimit`). A frame longer than the server's max_frame_len (told at the handshake)
// is refused here with FRAME_TOO_LARGE, unsent: the server would close the connection. The client reconnects with
// backoff when the connection drops (calls in flight then reject with DISCONNECTED),
// handshaking with the pools and triggers it has; a pool or trigger the server refuses by then
// is dropped and reported (`pool_left`, `trigger_refused`) rather than keeping it out.
//
// Memory blocks are used through the server, in binary messages (this client maps none):
// blockCreate, blockWrite, blockRead and blockDelete for any block, blockAppend and
// blockConsume for streams, blockLock/blockUnlock for leases (`lock_expired` tells when one ran
// out, or was lost with the connection: a lease does not survive a reconnect), and blockWatch, which calls a function with every
// change and resumes after a reconnect from the last version seen (a block gone by then ends the
// watch with a `deleted` event).

/** An error from the server (`code` is the wire code) or from the client itself. */
export class LatZeroError extends Error {
  constructor(code, message, extra = {}) {
    super(`${code}: ${message}`);
    this.name = "LatZeroError";
    this.code = code;
    Object.assign(this, extra);
  }
}

const PROTOCOL_VERSION = "1.0";
const DEFAULT_PORT = 45227;
const DEFAULT_MAX_FRAME_LEN = 16 * 1024 * 1024;
// A frame the server sends may pass its max_frame_len by this much (PROTOCOL.md §2).
const FRAME_SLACK = 65536;
// Frames written in one turn of the event loop go out at once when they reach this many bytes
// (the Unix socket and TCP under Node).
const WRITE_BATCH = 256 * 1024;
// Unsent bytes at which fire-and-forget sends wait for the connection (`writeBufferLimit`).
const DEFAULT_WRITE_BUFFER_LIMIT = 1024 * 1024;
const isNode = typeof process !== "undefined" && typeof process.versions?.node === "string";

/**
 * Connects and handshakes. Resolves to a Client once the server has acknowledged; rejects with
 * a LatZeroError if the server refuses the handshake (the first one is strict: every pool and
 * trigger asked for, or an error).
 *
 *   connect("ws://HOST:PORT", appId, options)      the WebSocket port (pages, and Node)
 *   connect("latzero://APP_ID...", options)         Node: the Unix socket or TCP (PROTOCOL.md §12)
 *
 * options: pools, triggers, meta, auth ({token} or {jwt}), takeover, ephemeral,
 *          timeoutMs (calls, and the wait for the handshake's answer; default 30000), reconnect (default true),
 *          backoffMinMs (100), backoffMaxMs (5000), WebSocket (a constructor),
 *          writeBufferLimit (bytes not yet taken by the connection at which a fire-and-forget
 *          emit waits for it; default 1 MiB).
 * A `latzero://` URL's pools may not be given again in options.
 */
export async function connect(url, appId, options = {}) {
  let endpoint = null;
  if (typeof url === "string" && /^latzeros?:\/\//.test(url)) {
    if (typeof appId === "string") {
      throw new LatZeroError("INVALID_URL", `${url}: the app id is in the URL; give options as the second argument`);
    }
    options = appId ?? {};
    if (!isNode) {
      throw new LatZeroError("INVALID_URL", `${url}: a page connects over WebSocket (ws:// or wss://, the server's --ws-port); latzero:// URLs are for Node`);
    }
    const parsed = parseUrl(url);
    if (parsed.pools && options.pools) {
      throw new LatZeroError("INVALID_URL", `${url}: pools given both in the URL and as an option`);
    }
    options = parsed.pools ? { ...options, pools: parsed.pools } : options;
    appId = parsed.appId;
    endpoint = await resolveEndpoint(parsed);
  }
  const client = new Client(url, appId, options, endpoint);
  await client._open(false);
  return client;
}

/**
 * A `latzero://` or `latzeros://` URL (PROTOCOL.md §12) read into {appId, socket, host, port,
 * pools, tlsFingerprint, tlsCa, secure}, each only when the URL gives it. Throws a LatZeroError
 * INVALID_URL for anything §12 refuses.
 */
export function parseUrl(url) {
  const bad = (why) => new LatZeroError("INVALID_URL", `${JSON.stringify(url)}: ${why}`);
  const secure = url.startsWith("latzeros://");
  if (!secure && !url.startsWith("latzero://")) {
    throw bad("not a latzero URL; expected latzero://APP_ID[@HOST:PORT][?socket=PATH&pools=A,B]");
  }
  const rest = url.slice(url.indexOf("://") + 3);
  const q = rest.indexOf("?");
  const main = (q < 0 ? rest : rest.slice(0, q)).replace(/\/+$/, "");
  const query = q < 0 ? "" : rest.slice(q + 1);
  const at = main.indexOf("@");
  const app = at < 0 ? main : main.slice(0, at);
  if (!app) throw bad("no app id");
  const out = { appId: app, secure };
  const hostPort = at < 0 ? "" : main.slice(at + 1);
  if (hostPort) {
    const colon = hostPort.lastIndexOf(":");
    const name = colon < 0 ? "" : hostPort.slice(0, colon);
    const port = colon < 0 ? "" : hostPort.slice(colon + 1);
    if (!name || !/^[0-9]+$/.test(port) || Number(port) > 65535) throw bad(`'${hostPort}' is not a valid HOST:PORT`);
    out.host = name.replace(/^\[|\]$/g, "");
    out.port = Number(port);
  }
  const pools = [];
  for (const [key, value] of new URLSearchParams(query)) {
    if (key === "socket") {
      if (out.host !== undefined) throw bad("give either @HOST:PORT or ?socket=PATH, not both");
      out.socket = value;
    } else if (key === "pools" || key === "pool") {
      pools.push(...value.split(",").filter((p) => p));
    } else if (key === "fingerprint" || key === "ca") {
      if (!secure) throw bad("fingerprint and ca are for latzeros:// (TLS) URLs");
      if (out.tlsFingerprint !== undefined || out.tlsCa !== undefined) throw bad("give one of fingerprint and ca, once");
      if (key === "fingerprint") {
        parseFingerprint(value);
        out.tlsFingerprint = value;
      } else {
        out.tlsCa = value;
      }
    } else {
      throw bad(`unknown URL parameter '${key}'; known: socket, pools, fingerprint, ca`);
    }
  }
  if (pools.length) out.pools = pools;
  if (secure) {
    if (out.socket !== undefined) throw bad("latzeros:// is TLS over TCP; the Unix socket is local and owner-only, use latzero://");
    if (out.tlsFingerprint === undefined && out.tlsCa === undefined) {
      throw bad("latzeros:// needs ?fingerprint=SHA256 (printed by the server at start) or ?ca=PATH to verify the server");
    }
    out.host ??= "127.0.0.1";
    out.port ??= DEFAULT_PORT;
  }
  return out;
}

/** A SHA-256 fingerprint as lowercase hex: 64 hex digits, colons and a `sha256:` prefix allowed. */
function parseFingerprint(text) {
  const hex = text.trim().replace(/^sha256:/i, "").replaceAll(":", "").toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new LatZeroError("INVALID_FINGERPRINT", `${JSON.stringify(text)} is not a SHA-256 fingerprint (64 hex digits, colons allowed)`);
  }
  return hex;
}

/** Node's modules, loaded only under Node and only for a `latzero://` URL (named through a
 * variable, so that a bundler building a page does not try to resolve them). */
async function nodeModules() {
  const names = ["node:net", "node:tls", "node:fs", "node:os", "node:path", "node:crypto"];
  const [net, tls, fs, os, path, crypto] = await Promise.all(names.map((n) => import(n)));
  return { net, tls, fs, os, path, crypto };
}

/** Where a parsed `latzero://` URL leads: {kind: "unix", path} or {kind: "tcp", host, port,
 * tls}, with the default endpoint of §12 when the URL names none. */
async function resolveEndpoint(parsed) {
  const node = await nodeModules();
  const base = { node };
  if (parsed.socket !== undefined) return { ...base, kind: "unix", path: parsed.socket };
  if (parsed.secure) {
    const tls = parsed.tlsFingerprint !== undefined ? { pin: parseFingerprint(parsed.tlsFingerprint) } : { ca: parsed.tlsCa };
    return { ...base, kind: "tcp", host: parsed.host, port: parsed.port, tls };
  }
  if (parsed.host !== undefined) return { ...base, kind: "tcp", host: parsed.host, port: parsed.port };
  const env = process.env;
  const dataDir = env.LATZERO_DATA_DIR || node.path.join(node.os.homedir(), ".latzero");
  const sock = node.path.join(dataDir, "latzero.sock");
  if (node.fs.existsSync(sock)) return { ...base, kind: "unix", path: sock };
  return { ...base, kind: "tcp", host: env.LATZERO_HOST || "127.0.0.1", port: Number(env.LATZERO_PORT || DEFAULT_PORT) };
}

export class Client {
  constructor(url, appId, options, endpoint = null) {
    this.url = url;
    // A `latzero://` URL's Unix socket or TCP endpoint; null for a WebSocket URL.
    this._endpoint = endpoint;
    this._maxFrameLen = DEFAULT_MAX_FRAME_LEN;
    this.appId = appId;
    // Checked here, not at the first call.
    if (options.timeoutMs !== undefined) wireMs(options.timeoutMs, "timeoutMs");
    this.options = options;
    this.pools = new Set(options.pools ?? []);
    this.triggers = new Set(options.triggers ?? []);
    this._presence = new Set();
    // Watched blocks: "pool\u0000blockId" -> {pool, blockId, fn, seen, createdAt}.
    this._watches = new Map();
    // Lock leases held: "pool\u0000blockId" -> {pool, blockId, mode}. One that ends other than
    // by blockUnlock is told with a `lock_expired` event, also when the connection drops.
    this._leases = new Map();
    // Connections dropped so far: a grant read just before a drop, taken up after it, ended with
    // its connection and is not taken for a lease held.
    this._drops = 0;
    this._handlers = new Map();
    this._pending = new Map();
    this._listeners = new Map();
    this._nextId = 1;
    this._ws = null;
    this._closed = false;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (endpoint === null && typeof this._WebSocket !== "function") {
      throw new LatZeroError(
        "NO_WEBSOCKET",
        "this JavaScript has no WebSocket: pass one as options.WebSocket (Node before 22: --experimental-websocket, or the ws package)",
      );
    }
  }

  /** Listens for `disconnected`, `reconnected`, `reconnect_refused`, `pool_left`,
   * `trigger_refused`, `presence`, `lock_expired` and `server_error` events. Any other name is
   * INVALID_OPTIONS (a misspelt one would never fire). */
  on(event, fn) {
    if (!EVENTS.includes(event)) {
      throw new LatZeroError("INVALID_OPTIONS", `no event ${JSON.stringify(event)}; the events are ${EVENTS.join(", ")}`);
    }
    mustCall(fn, "an event listener");
    if (!this._listeners.has(event)) this._listeners.set(event, []);
    this._listeners.get(event).push(fn);
    return this;
  }

  _emitEvent(event, detail) {
    for (const fn of this._listeners.get(event) ?? []) {
      try {
        fn(detail);
      } catch (e) {
        console.error(`latzero: a '${event}' listener threw`, e);
      }
    }
  }

  /** Where the client connects, for messages. */
  _where() {
    const e = this._endpoint;
    if (e === null) return this.url;
    return e.kind === "unix" ? `unix:${e.path}` : `${e.tls ? "tls" : "tcp"}:${e.host}:${e.port}`;
  }

  /** Opens the connection (a WebSocket, or a socket in a WebSocket's shape) and handshakes;
   * `partial` for a reconnect. */
  _open(partial) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = this._endpoint === null ? new this._WebSocket(this.url) : new SocketTransport(this._endpoint);
      } catch (e) {
        reject(new LatZeroError("CONNECT", `cannot open ${this._where()}: ${e.message ?? e}`));
        return;
      }
      // Settled: acknowledged, refused, failed, or out of time. A server that accepts and never
      // answers (something else on the port) is given the call timeout, as a call is.
      let acked = false;
      const ms = this.options.timeoutMs ?? 30000;
      const timer = setTimeout(() => {
        if (settle()) {
          reject(new LatZeroError("CONNECT", `no answer to the handshake from ${this._where()} within ${ms} ms; is it a LatZero server?`));
          ws.close();
        }
      }, ms);
      const settle = () => {
        if (acked) return false;
        acked = true;
        clearTimeout(timer);
        return true;
      };
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        const hs = {
          action: "handshake",
          id: 0,
          app_id: this.appId,
          pools: [...this.pools],
          triggers: [...this.triggers],
          protocol_version: PROTOCOL_VERSION,
        };
        if (this.options.meta !== undefined) hs.meta = this.options.meta;
        if (this.options.auth) hs.auth = this.options.auth;
        if (this.options.takeover) hs.takeover = true;
        if (this.options.ephemeral) hs.ephemeral = true;
        if (partial) hs.partial = true;
        ws.send(JSON.stringify(hs));
      };
      ws.onmessage = (m) => {
        let f;
        let body;
        // A frame that does not read (not JSON, not one object, a binary header past its end)
        // is skipped with a warning, as the Rust SDK skips it; before the handshake's answer
        // it fails the connection.
        try {
          if (typeof m.data === "string") {
            f = JSON.parse(m.data);
          } else {
            [f, body] = readBinary(new Uint8Array(m.data));
          }
          if (f === null || typeof f !== "object" || Array.isArray(f)) {
            const what = Array.isArray(f) ? "an array" : f === null ? "null" : `a ${typeof f}`;
            throw new Error(`a frame that is not a JSON object (${what})`);
          }
        } catch (e) {
          if (acked) {
            console.warn("latzero: skipped a frame from the server that does not read:", e.message);
          } else {
            settle(); // the close that follows is not a drop
            reject(new LatZeroError("PROTOCOL", `the handshake answer from ${this._where()} does not read: ${e.message}`));
            ws.close();
          }
          return;
        }
        if (!acked) {
          if (f.action === "handshake_ack") {
            settle();
            this._ws = ws;
            const max = f.limits?.max_frame_len;
            this._maxFrameLen = Number.isSafeInteger(max) && max > 0 ? max : DEFAULT_MAX_FRAME_LEN;
            if (ws instanceof SocketTransport) ws.maxLen = this._maxFrameLen + FRAME_SLACK;
            for (const p of f.pools ?? []) this.pools.add(p);
            for (const t of f.triggers ?? []) this.triggers.add(t);
            for (const r of f.refused ?? []) this._refused(r);
            resolve(this);
          } else if (f.action === "error" || f.action === "closing") {
            settle(); // the close that follows is not a drop
            reject(new LatZeroError(f.code, f.message));
            ws.close();
          }
          return;
        }
        try {
          this._dispatch(f, body);
        } catch (e) {
          // Fields of the wrong type: under Node a throw here would end the process.
          console.warn("latzero: skipped a frame from the server that does not read:", e.message);
        }
      };
      // Some WebSockets (Node 20's) report a failed connection with an error and no close.
      // `code` and `hint` come from the socket transport's errors; a WebSocket gives neither.
      const ended = (why, code, hint) => {
        if (settle()) {
          if (this._endpoint === null) hint = "is the server started with --ws-port, and is this page's origin allowed (--ws-origin)?";
          else if (code === undefined) hint = "is the server running (`latzero start`)?";
          reject(new LatZeroError(code ?? "CONNECT", `cannot connect to ${this._where()} (${why})${hint ? `; ${hint}` : ""}`));
          return;
        }
        if (this._ws === ws) this._lost(why);
      };
      ws.onerror = (e) => ended(e?.message || "connection error", e?.code, e?.hint);
      ws.onclose = (e) => ended(e.reason || `connection closed (code ${e.code})`);
    });
  }

  _refused(r) {
    const reason = `${r.code}: ${r.message}`;
    if (r.pool !== undefined) {
      this.pools.delete(r.pool);
      this._emitEvent("pool_left", { pool: r.pool, reason });
    } else if (r.trigger !== undefined) {
      this.triggers.delete(r.trigger);
      this._handlers.delete(r.trigger);
      this._emitEvent("trigger_refused", { trigger: r.trigger, reason });
    }
  }

  _dispatch(f, body) {
    switch (f.action) {
      case "trigger":
        this._deliver(f, true);
        return;
      case "emit":
        this._deliver(f, false);
        return;
      case "presence":
        this._emitEvent("presence", { pool: f.pool, appId: f.app_id, joined: f.event === "joined" });
        return;
      case "pool_left":
        this.pools.delete(f.pool);
        this._emitEvent("pool_left", { pool: f.pool, reason: f.message });
        return;
      case "closing":
        this._closing = f;
        return;
      case "block_event":
        this._blockEvent(f);
        return;
    }
    const waiter = f.in_reply_to !== undefined ? this._pending.get(String(f.in_reply_to)) : undefined;
    if (!waiter) {
      if (f.action === "error") this._emitEvent("server_error", new LatZeroError(f.code, f.message));
      return;
    }
    this._pending.delete(String(f.in_reply_to));
    clearTimeout(waiter.timer);
    if (f.action === "error") {
      waiter.reject(new LatZeroError(f.code, f.message, { handler: f.handler, handlerMayStillRun: f.handler_may_still_run }));
    } else if (f.action === "response" && f.status === "error") {
      waiter.reject(handlerError(f.error));
    } else {
      if (body !== undefined) f._body = body;
      waiter.resolve(f);
    }
  }

  _blockEvent(f) {
    if (f.event === "lock_expired") {
      this._leases.delete(`${f.pool}\u0000${f.block_id}`);
      const detail = { pool: f.pool, blockId: f.block_id, mode: f.mode };
      if (f.reason !== undefined) detail.reason = f.reason;
      this._emitEvent("lock_expired", detail);
      return;
    }
    const key = `${f.pool}\u0000${f.block_id}`;
    const w = this._watches.get(key);
    if (!w) return;
    const version = f.version ?? 0;
    if (f.event === "changed") {
      w.seen = Math.max(w.seen ?? 0, version);
    } else if (f.event === "synced") {
      // Where the live events start, even below a version seen of an earlier block of the name.
      w.seen = version;
      if (f.created_at !== undefined) w.createdAt = f.created_at;
    } else if (f.event === "deleted" || f.event === "unwatched") {
      this._watches.delete(key);
    }
    const detail = { event: f.event, pool: f.pool, blockId: f.block_id, version };
    for (const [from, to] of [["offset", "offset"], ["length", "length"], ["created_at", "createdAt"], ["reason", "reason"]]) {
      if (f[from] !== undefined) detail[to] = f[from];
    }
    try {
      w.fn(detail);
    } catch (e) {
      console.error(`latzero: the watch of ${f.pool}/${f.block_id} threw`, e);
    }
  }

  async _resumeWatch(key) {
    const w = this._watches.get(key);
    if (!w) return;
    const frame = { action: "block_watch", pool: w.pool, block_id: w.blockId, since: w.seen ?? 0 };
    if (w.createdAt !== undefined) frame.created_at = w.createdAt;
    try {
      await this._request(frame, this.options.timeoutMs ?? 30000);
    } catch (e) {
      // Disconnected again (the next reconnect asks again), or the watch replaced meanwhile.
      if (e.code === "DISCONNECTED" || e.code === "NO_REPLY" || this._watches.get(key) !== w) return;
      const ended = e.code === "BLOCK_NOT_FOUND" ? { event: "deleted" } : { event: "unwatched", reason: `the watch could not be resumed after a reconnect: ${e.message}` };
      this._blockEvent({ pool: w.pool, block_id: w.blockId, version: w.seen ?? 0, ...ended });
    }
  }

  async _deliver(f, answer) {
    const handler = this._handlers.get(f.process);
    // Called without a catch (from the read): nothing may escape as a rejection, which Node
    // ends the process for. A connection closing or gone by the handler's end has failed the
    // call already (HANDLER_GONE): there is no one to answer.
    const reply = (ok, value) => {
      if (!answer || this._ws === null || this._ws.readyState !== 1) return;
      const r = { action: "response", in_reply_to: f.id, status: ok ? "ok" : "error" };
      r[ok ? "response" : "error"] = value ?? null;
      this._send(r);
    };
    if (!handler) {
      reply(false, { message: `this app has no handler for '${f.process}'` });
      return;
    }
    try {
      const out = await handler({ data: f.data ?? null, pool: f.pool, process: f.process, origin: f.origin?.app_id });
      reply(true, out === undefined ? null : out);
    } catch (e) {
      try {
        reply(false, { message: e?.message ?? String(e) });
      } catch {
        // Not sendable either (the connection went between the two): see `reply`.
      }
    }
  }

  _send(frame, body) {
    if (this._ws === null || this._ws.readyState !== 1) {
      throw new LatZeroError("DISCONNECTED", "not connected to the server; the client is reconnecting");
    }
    const message = body === undefined ? JSON.stringify(frame) : binaryFrame(frame, body);
    // A string's UTF-8 length is at most three bytes per UTF-16 unit: counted only near the limit.
    const max = this._maxFrameLen;
    const len = typeof message !== "string" ? message.length : message.length * 3 <= max ? 0 : new TextEncoder().encode(message).length;
    if (len > max) {
      throw new LatZeroError("FRAME_TOO_LARGE", `a frame of ${len} bytes exceeds the server's max_frame_len of ${max} bytes; not sent`);
    }
    this._ws.send(message);
  }

  /** Sends a request with an id and resolves with the server's answer frame. */
  _request(frame, timeoutMs, body) {
    return new Promise((resolve, reject) => {
      // An integer on the wire (a call's frame then has the layout the server reads first),
      // its text the key here, as `in_reply_to` comes back.
      const n = this._nextId++;
      const id = String(n);
      frame.id = n;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new LatZeroError("NO_REPLY", `no reply from the server within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      try {
        this._send(frame, body);
      } catch (e) {
        this._pending.delete(id);
        clearTimeout(timer);
        reject(e);
      }
    });
  }

  /** Calls a trigger; resolves with its response. opts: timeoutMs (the call's ttl at the server
   * too), to (an app id). */
  async call(pool, trigger, data = null, opts = {}) {
    const timeoutMs = wireMs(opts.timeoutMs ?? this.options.timeoutMs ?? 30000, "timeoutMs");
    // The id's place comes second (set by _request): the layout the server reads first, as the
    // Rust SDK writes it.
    const frame = { action: "trigger", id: 0, process: trigger, pool, data, ttl: timeoutMs };
    if (opts.to) frame.destination = opts.to;
    // The server's own deadline answers first (TIMEOUT); this one covers a server gone quiet.
    const f = await this._request(frame, timeoutMs + 1000);
    return f.response ?? null;
  }

  /** Calls a trigger on every app of the pool that serves it (PROTOCOL.md §5.5); resolves once
   * each has answered or failed, with an array of `{appId, response}` or `{appId, error}` (a
   * LatZeroError: HANDLER_ERROR for the handler's own error, else the server's code for it,
   * TIMEOUT say). Rejects with NO_HANDLER when none serves it. opts: timeoutMs. */
  async broadcast(pool, trigger, data = null, opts = {}) {
    const timeoutMs = wireMs(opts.timeoutMs ?? this.options.timeoutMs ?? 30000, "timeoutMs");
    const frame = { action: "trigger", process: trigger, pool, data, ttl: timeoutMs, broadcast: true };
    const f = await this._request(frame, timeoutMs + 1000);
    return (f.responses ?? []).map((r) => {
      if (r.status === "ok") return { appId: r.app_id, response: r.response ?? null };
      if (r.code !== undefined) return { appId: r.app_id, error: new LatZeroError(r.code, r.message) };
      return { appId: r.app_id, error: handlerError(r.error) };
    });
  }

  /** Emits to every handler of a trigger in a pool; resolves with how many it reached (the
   * server's receipt). With `opts.confirm` false it is fire-and-forget, as the Rust SDK's
   * `emit`: it resolves (with undefined) once the event is queued to the server and the
   * connection's write buffer is under its limit, and a refusal (NOT_IN_POOL, OVERLOADED) comes
   * later as a `server_error` event. An event still unsent when the connection drops is lost
   * with it (the `disconnected` event tells of the drop): wait for the receipt where that
   * matters. */
  async emit(pool, trigger, data = null, opts = {}) {
    if (opts.confirm === false) {
      this._send({ action: "emit", process: trigger, pool, data });
      await this._room();
      return undefined;
    }
    const f = await this._request({ action: "emit", process: trigger, pool, data }, this.options.timeoutMs ?? 30000);
    return f.delivered;
  }

  /** Resolves once the connection's unsent bytes are under `writeBufferLimit` (at once when
   * they are): what sends without waiting for answers waits here instead, so that its frames
   * cannot pile up in memory faster than the connection takes them. */
  async _room() {
    const ws = this._ws;
    const limit = this.options.writeBufferLimit ?? DEFAULT_WRITE_BUFFER_LIMIT;
    if (ws === null || ws.bufferedAmount < limit) return;
    if (ws.drained) return ws.drained();
    // A WebSocket tells of no drain: look again each turn of the event loop.
    while (ws.readyState === 1 && ws.bufferedAmount >= limit) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  /** Registers a handler: `fn({data, pool, process, origin})` returns (or resolves to) the
   * response; a throw answers the caller with an error. Resolves once the server has it. */
  async handle(trigger, fn) {
    mustCall(fn, "a handler");
    const had = this._handlers.has(trigger);
    this._handlers.set(trigger, fn);
    if (had) return;
    try {
      await this._hold(this.triggers, trigger, { action: "register", triggers: [trigger] });
    } catch (e) {
      this._handlers.delete(trigger);
      throw e;
    }
  }

  /** Stops serving a trigger: the handler is forgotten, and the server unregisters it. A call
   * the server routed here meanwhile is answered with an error. While disconnected it is
   * forgotten here, and the next handshake leaves it out. */
  async unhandle(trigger) {
    this._handlers.delete(trigger);
    this.triggers.delete(trigger);
    await this._release({ action: "unregister", triggers: [trigger] });
  }

  /** Joins a pool (created on first join). While disconnected the pool is recorded and asked
   * for in the next handshake. */
  async join(pool) {
    await this._hold(this.pools, pool, { action: "join", pools: [pool] });
  }

  /** Asks for `presence` events of a pool the client is in; asked again after reconnects. */
  async subscribePresence(pool) {
    await this._hold(this._presence, pool, { action: "presence_subscribe", pool });
  }

  /** Stops the `presence` events of a pool. */
  async unsubscribePresence(pool) {
    this._presence.delete(pool);
    await this._release({ action: "presence_unsubscribe", pool });
  }

  /** Asks the server to let go of something already forgotten here; while disconnected there
   * is nothing to ask (the next handshake leaves it out). */
  async _release(frame) {
    try {
      await this._request(frame, this.options.timeoutMs ?? 30000);
    } catch (e) {
      if (e.code !== "DISCONNECTED") throw e;
    }
  }

  /** Adds `item` to `held` (what the next handshake or reconnect asks for again) and asks the
   * server now. Refused, it is taken out again, unless it was there before; while disconnected
   * it stays, recorded, and this resolves. */
  async _hold(held, item, frame) {
    const had = held.has(item);
    held.add(item);
    try {
      await this._request(frame, this.options.timeoutMs ?? 30000);
    } catch (e) {
      if (e.code === "DISCONNECTED") return;
      if (!had) held.delete(item);
      throw e;
    }
  }

  // Memory blocks, through the server (PROTOCOL.md §7), in binary messages.

  /** Creates a memory block; resolves with the server's description of it.
   * opts: type ("binary", "json", "stream"), persistent, permissions. */
  async blockCreate(pool, blockId, size, opts = {}) {
    const frame = { action: "block_create", pool, block_id: blockId, size, type: opts.type ?? "binary", persistent: opts.persistent ?? false };
    if (opts.permissions) frame.permissions = opts.permissions;
    return (await this._request(frame, this.options.timeoutMs ?? 30000)).block;
  }

  /** Writes bytes (a Uint8Array) at `opts.offset` of a binary block, or replaces a json block's
   * document (`opts.document`); resolves with the block's new version. */
  async blockWrite(pool, blockId, data, opts = {}) {
    const frame = { action: "block_write", pool, block_id: blockId };
    const timeout = this.options.timeoutMs ?? 30000;
    if (opts.document !== undefined) {
      frame.document = opts.document;
      return (await this._request(frame, timeout)).version;
    }
    frame.offset = opts.offset ?? 0;
    return (await this._request(frame, timeout, data ?? new Uint8Array())).version;
  }

  /** Reads a block: {data: Uint8Array, version} for a binary block (from `opts.offset`,
   * `opts.length` bytes or to the end), {document, version} for a json block. */
  async blockRead(pool, blockId, opts = {}) {
    const frame = { action: "block_read", pool, block_id: blockId };
    if (opts.offset) frame.offset = opts.offset;
    if (opts.length !== undefined) frame.length = opts.length;
    const f = await this._request(frame, this.options.timeoutMs ?? 30000);
    if ("document" in f) return { document: f.document, version: f.version };
    return { data: f._body ?? new Uint8Array(), version: f.version };
  }

  /** Deletes a memory block. */
  async blockDelete(pool, blockId) {
    await this._request({ action: "block_delete", pool, block_id: blockId }, this.options.timeoutMs ?? 30000);
  }

  /** Appends a record (a Uint8Array) to a stream block; resolves with {index, version}. */
  async blockAppend(pool, blockId, record) {
    const f = await this._request({ action: "block_write", pool, block_id: blockId }, this.options.timeoutMs ?? 30000, record);
    return { index: f.index, version: f.version };
  }

  /** Reads up to `opts.max` (1000) records of a stream block from the named consumer's cursor
   * (1-48 bytes; registered on first use, at the oldest record held), which moves past them.
   * Resolves with {records: [Uint8Array], skipped, nextIndex, version}: `skipped` counts
   * records an overwriting stream dropped before this consumer read them. */
  async blockConsume(pool, blockId, consumer, opts = {}) {
    const frame = { action: "block_read", pool, block_id: blockId, consumer, max: opts.max ?? 1000 };
    const f = await this._request(frame, this.options.timeoutMs ?? 30000);
    const body = f._body ?? new Uint8Array();
    const records = [];
    let at = 0;
    for (const n of f.lengths ?? []) {
      if (at + n > body.length) throw new LatZeroError("PROTOCOL", "block_records lengths exceed the body");
      records.push(body.slice(at, at + n));
      at += n;
    }
    return { records, skipped: f.skipped ?? 0, nextIndex: f.next_index, version: f.version };
  }

  /** Takes a lease on a block: `opts.mode` "exclusive" (default; needs write permission) or
   * "shared" (read), waiting up to `opts.waitMs` for it (0, the default: fail at once with
   * LOCKED; else LOCK_TIMEOUT). `opts.leaseMs` (the server's default, 30 s, without it) is
   * renewed by locking again. Resolves with {mode, leaseMs, renewed}: `renewed` is false for a
   * new lease, so a holder renewing learns that its lease had run out. The lease ends at
   * blockUnlock, when it expires (a `lock_expired` event), or with the connection; a grant that
   * comes just before the connection drops ended with it, and rejects with DISCONNECTED. */
  async blockLock(pool, blockId, opts = {}) {
    const waitMs = wireMs(opts.waitMs ?? 0, "waitMs", true);
    const frame = { action: "block_lock", pool, block_id: blockId, mode: opts.mode ?? "exclusive", wait_ms: waitMs };
    if (opts.leaseMs !== undefined) frame.lease_ms = wireMs(opts.leaseMs, "leaseMs");
    const drops = this._drops;
    const f = await this._request(frame, (this.options.timeoutMs ?? 30000) + waitMs);
    if (this._drops !== drops) {
      // Granted, but the connection dropped before this call took the grant up (a frame behind
      // the grant in the same read ended it, say), and the lease ended with it.
      throw new LatZeroError("DISCONNECTED", "the connection to the server dropped just after the lock was granted; the lease ended with it");
    }
    this._leases.set(`${pool}\u0000${blockId}`, { pool, blockId, mode: f.mode ?? frame.mode });
    return { mode: f.mode, leaseMs: f.lease_ms, renewed: f.renewed };
  }

  /** Releases this client's lease on a block (NOT_LOCKED if it holds none). */
  async blockUnlock(pool, blockId) {
    const key = `${pool}\u0000${blockId}`;
    try {
      await this._request({ action: "block_unlock", pool, block_id: blockId }, this.options.timeoutMs ?? 30000);
    } catch (e) {
      if (e.code === "NOT_LOCKED") this._leases.delete(key);
      throw e;
    }
    this._leases.delete(key);
  }

  /** Watches a block: `fn(event)` gets each event, {event, pool, blockId, version}: "changed"
   * (with offset and length; for streams the record's index and size), "synced" (the initial
   * state is sent; with createdAt), "deleted" and "unwatched" (with reason), after which none
   * follow. With `opts.since` (the last version seen) a newer block starts with a "changed" for
   * the whole of it. After a reconnect the watch resumes from the last version seen; a block
   * gone by then (a non-persistent block does not outlive its server) ends it with "deleted".
   * Watching a block again replaces fn. While disconnected it is recorded. */
  async blockWatch(pool, blockId, fn, opts = {}) {
    mustCall(fn, "a watch");
    const key = `${pool}\u0000${blockId}`;
    const w = { pool, blockId, fn, seen: opts.since, createdAt: undefined };
    this._watches.set(key, w);
    const frame = { action: "block_watch", pool, block_id: blockId };
    if (opts.since !== undefined) frame.since = opts.since;
    try {
      await this._request(frame, this.options.timeoutMs ?? 30000);
    } catch (e) {
      if (e.code === "DISCONNECTED") return;
      if (this._watches.get(key) === w) this._watches.delete(key);
      throw e;
    }
  }

  /** Stops watching a block. */
  async blockUnwatch(pool, blockId) {
    if (!this._watches.delete(`${pool}\u0000${blockId}`)) return;
    try {
      await this._request({ action: "block_unwatch", pool, block_id: blockId }, this.options.timeoutMs ?? 30000);
    } catch (e) {
      if (e.code !== "DISCONNECTED") throw e; // the watch went with the connection
    }
  }

  /** Leaves a pool. While disconnected it is forgotten here, and the next handshake leaves it
   * out. */
  async leave(pool) {
    this.pools.delete(pool);
    this._presence.delete(pool);
    await this._release({ action: "leave", pools: [pool] });
  }

  _lost(reason) {
    this._ws = null;
    for (const [id, w] of this._pending) {
      clearTimeout(w.timer);
      w.reject(new LatZeroError("DISCONNECTED", "the connection to the server was lost before the reply arrived; the call may or may not have run"));
      this._pending.delete(id);
    }
    // Leases end with their connection, and are not taken again: each holder is told.
    this._drops += 1;
    const leases = [...this._leases.values()];
    this._leases.clear();
    for (const l of leases) {
      const reason = "the connection to the server dropped: a lease ends with its connection, and is not taken again after a reconnect";
      this._emitEvent("lock_expired", { pool: l.pool, blockId: l.blockId, mode: l.mode, reason });
    }
    const closing = this._closing;
    this._closing = undefined;
    // Taken over by another connection: coming back would take it back, and the two would flap.
    const reconnecting = !this._closed && this.options.reconnect !== false && closing?.code !== "DUPLICATE_APP";
    this._emitEvent("disconnected", { reason: closing ? `${closing.code}: ${closing.message}` : reason, reconnecting });
    if (reconnecting) this._reconnect();
  }

  async _reconnect() {
    const min = this.options.backoffMinMs ?? 100;
    const max = this.options.backoffMaxMs ?? 5000;
    let told = false;
    for (let attempt = 0; !this._closed; attempt++) {
      const delay = Math.min(max, min * 2 ** Math.min(attempt, 20)) * (0.5 + Math.random() / 2);
      await new Promise((r) => setTimeout(r, delay));
      if (this._closed) return;
      try {
        await this._open(true);
        // Presence subscriptions were the old connection's.
        for (const pool of [...this._presence]) {
          if (this.pools.has(pool)) this._send({ action: "presence_subscribe", pool });
          else this._presence.delete(pool);
        }
        // So were block watches: resumed from the last version seen, each as a request, so that
        // one the server refuses now ends with an event instead of waiting for ever.
        for (const key of [...this._watches.keys()]) this._resumeWatch(key);
        this._emitEvent("reconnected", {});
        return;
      } catch (e) {
        // A refusal by the server (a credential, the app id in use) is told once per outage.
        if (e.code !== "CONNECT" && !told) {
          told = true;
          this._emitEvent("reconnect_refused", { reason: e.message });
        }
      }
    }
  }

  /** Closes the connection; calls in flight reject with DISCONNECTED. */
  close() {
    this._closed = true;
    const ws = this._ws;
    if (ws) {
      this._lost("client closed");
      ws.close(1000);
    }
  }
}

/**
 * A Unix socket or TCP (TLS) connection under Node, in the shape of the WebSocket the client
 * otherwise uses: `onopen`, `onmessage({data})`, `onerror`, `onclose`, `send`, `close` and
 * `readyState`. Each frame of PROTOCOL.md §2 — a 4-byte big-endian length, then the payload —
 * is one message: a JSON frame as a string, a binary frame (first byte 0) as an ArrayBuffer.
 * A frame announced longer than `maxLen` (the server's max_frame_len and its slack, once the
 * handshake told it) ends the connection with FRAME_TOO_LARGE.
 */
class SocketTransport {
  constructor(endpoint) {
    const { net, tls, fs, crypto } = endpoint.node;
    this.readyState = 0;
    this.binaryType = "arraybuffer";
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    this.maxLen = DEFAULT_MAX_FRAME_LEN + FRAME_SLACK;
    // What has been read and not yet handed on, in the chunks it came in, and their length.
    this._chunks = [];
    this._have = 0;
    let sock;
    if (endpoint.kind === "unix") {
      sock = net.connect(endpoint.path);
    } else if (!endpoint.tls) {
      sock = net.connect(endpoint.port, endpoint.host);
    } else {
      const ca = endpoint.tls.ca !== undefined ? fs.readFileSync(endpoint.tls.ca) : undefined;
      sock = tls.connect({
        host: endpoint.host,
        port: endpoint.port,
        servername: net.isIP(endpoint.host) ? undefined : endpoint.host,
        minVersion: "TLSv1.2",
        // Pinned: the certificate is checked against the fingerprint once connected, not by a
        // chain (the generated one is self-signed). With a CA, Node checks chain and host.
        ca,
        rejectUnauthorized: ca !== undefined,
      });
    }
    this._sock = sock;
    sock.on(endpoint.tls ? "secureConnect" : "connect", () => {
      if (endpoint.tls?.pin !== undefined) {
        const got = crypto.createHash("sha256").update(sock.getPeerCertificate().raw ?? "").digest("hex");
        if (got !== endpoint.tls.pin) {
          const colons = (h) => h.toUpperCase().match(/../g).join(":");
          this._fail("TLS", `the server's certificate has fingerprint ${colons(got)}, not the pinned ${colons(endpoint.tls.pin)}`);
          return;
        }
      }
      if (endpoint.kind === "tcp") sock.setNoDelay(true);
      this.readyState = 1;
      this.onopen?.();
    });
    sock.on("data", (chunk) => this._read(chunk));
    sock.on("error", (e) => {
      // Before the TLS session is up, anything but a failed connect or read is TLS's refusal.
      if (endpoint.tls && this.readyState === 0 && !e.syscall) this._fail("TLS", e.message, "does the server serve TLS (--tls)?");
      else this._fail(undefined, e.message);
    });
    sock.on("close", () => {
      this.readyState = 3;
      this.onclose?.({ code: 1006, reason: this._reason ?? "the server closed the connection" });
    });
  }

  /** Ends the connection for `message` (an `error` first, then the `close`). */
  _fail(code, message, hint) {
    if (this._reason !== undefined) return;
    this._reason = code ? `${code}: ${message}` : message;
    this.onerror?.({ code, message, hint });
    this._sock.destroy();
  }

  _read(chunk) {
    this._chunks.push(chunk);
    this._have += chunk.length;
    // Chunks are joined only when a length or a whole frame spans them: once per frame.
    const joined = (n) => {
      if (this._chunks[0].length < n) this._chunks = [Buffer.concat(this._chunks)];
      return this._chunks[0];
    };
    while (this._have >= 4 && this._reason === undefined) {
      const len = joined(4).readUInt32BE(0);
      if (len > this.maxLen) {
        this._fail("FRAME_TOO_LARGE", `the server announced a frame of ${len} bytes, more than the ${this.maxLen} read`, "is it a LatZero server?");
        return;
      }
      if (this._have < 4 + len) return;
      const first = joined(4 + len);
      const payload = first.subarray(4, 4 + len);
      if (first.length > 4 + len) this._chunks[0] = first.subarray(4 + len);
      else this._chunks.shift();
      this._have -= 4 + len;
      const data = payload[0] === 0 ? payload.buffer.slice(payload.byteOffset, payload.byteOffset + len) : payload.toString("utf8");
      this.onmessage?.({ data });
    }
  }

  send(message) {
    let out;
    if (typeof message === "string") {
      const n = Buffer.byteLength(message);
      out = Buffer.allocUnsafe(4 + n);
      out.write(message, 4);
    } else {
      out = Buffer.allocUnsafe(4 + message.length);
      out.set(message, 4);
    }
    out.writeUInt32BE(out.length - 4, 0);
    // Frames sent in one turn of the event loop go out in one write (a write each was a syscall
    // each), or as soon as they fill a batch: a loop that sends without waiting for answers
    // (an `await` resolved at once each time) may not end the turn.
    if (!this._corked) {
      this._corked = true;
      this._sock.cork();
      process.nextTick(() => this._uncork());
    }
    this._sock.write(out);
    if (this._sock.writableLength >= WRITE_BATCH) this._uncork();
  }

  _uncork() {
    if (!this._corked) return;
    this._corked = false;
    this._sock.uncork();
  }

  /** Bytes written and not yet taken by the socket, as a WebSocket's `bufferedAmount`. */
  get bufferedAmount() {
    return this._sock.writableLength;
  }

  /** Resolves when the socket has taken what was written (its `drain`), or has closed; at once
   * when what it holds is under its own high-water mark (no `drain` comes then). */
  drained() {
    if (!this._sock.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this._sock.off("drain", done);
        this._sock.off("close", done);
        resolve();
      };
      this._sock.on("drain", done);
      this._sock.on("close", done);
    });
  }

  /** Ends the connection once what was sent is written, without waiting for the peer to end
   * its side (a peer that is not a LatZero server may never). */
  close() {
    if (this.readyState === 3) return;
    this.readyState = 2;
    this._sock.destroySoon();
  }
}

/** A handler's own error (a response with status error) as a LatZeroError HANDLER_ERROR. */
function handlerError(error) {
  const message = typeof error?.message === "string" ? error.message : JSON.stringify(error);
  return new LatZeroError("HANDLER_ERROR", message, { error });
}

/** The events `Client.on` takes. */
const EVENTS = ["disconnected", "reconnected", "reconnect_refused", "pool_left", "trigger_refused", "presence", "lock_expired", "server_error"];

/** INVALID_OPTIONS unless `fn` is a function (found here, not when the first event calls it). */
function mustCall(fn, what) {
  if (typeof fn !== "function") throw new LatZeroError("INVALID_OPTIONS", `${what} must be a function, got ${fn === null ? "null" : typeof fn}`);
}

/** `ms` as whole milliseconds for the wire, rounded up (a deadline is never cut short); a
 * LatZeroError INVALID_OPTIONS for anything but a finite number above zero (or zero where
 * `zero`: "do not wait"). NaN and Infinity went out as `null` (the server's default) while the
 * client's own timer fired at once; a negative lease was taken as 1 ms. */
function wireMs(ms, what, zero = false) {
  if (typeof ms !== "number" || !Number.isFinite(ms) || !(ms > 0 || (zero && ms === 0))) {
    throw new LatZeroError("INVALID_OPTIONS", `${what} must be a number of milliseconds ${zero ? "zero or more" : "above zero"}, got ${typeof ms === "string" ? JSON.stringify(ms) : String(ms)}`);
  }
  return ms > 0 ? Math.max(1, Math.ceil(ms)) : 0;
}

/** A binary frame's payload (PROTOCOL.md §2.2): the 0 marker, the header's length, the header,
 * the body. */
function binaryFrame(header, body) {
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(5 + h.length + body.length);
  out[0] = 0;
  new DataView(out.buffer).setUint32(1, h.length);
  out.set(h, 5);
  out.set(body, 5 + h.length);
  return out;
}

/** A binary message read as [header, body]; a JSON frame sent as binary is [message, undefined]. */
function readBinary(bytes) {
  if (bytes[0] !== 0) return [JSON.parse(new TextDecoder().decode(bytes)), undefined];
  if (bytes.length < 5) throw new Error(`a binary frame of ${bytes.length} bytes, shorter than its header's length`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(1);
  if (5 + n > bytes.length) throw new Error("a binary frame whose header does not fit");
  return [JSON.parse(new TextDecoder().decode(bytes.subarray(5, 5 + n))), bytes.slice(5 + n)];
}
