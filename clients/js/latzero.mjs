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
// backoff when the connection drops (calls in flight then reject with DISCONNECTED, whose
// message says why it dropped, as the `disconnected` event does; `sent` is false on one made
// while no connection was up, which the server never saw),
// handshaking with the pools and triggers it has; a pool or trigger the server refuses by then
// is dropped and reported (`pool_left`, `trigger_refused`) rather than keeping it out.
//
// Memory blocks are used through the server, in binary messages: blockCreate, blockWrite,
// blockRead and blockDelete for any block, blockAttach for a Block that under Node reads the
// block's file directly (same host and user; no mmap, so positioned reads under the block's
// seqlock, without a round trip; writes still go through the server), blockAppend and
// blockConsume for streams, blockLock/blockUnlock for leases (`lock_expired` tells when one ran
// out, or was lost with the connection: a lease does not survive a reconnect), and blockWatch, which calls a function with every
// change and resumes after a reconnect from the last version seen (a block gone by then ends the
// watch with a `deleted` event).
//
// Encrypted pools (PROTOCOL.md §4.6): `encryptedPool(pool, keys)` proves the pool's SigilKey and
// resolves with an EncryptedPool whose calls, emits, handlers, blocks and stream records are
// sealed and opened as the Rust SDK's are, on Node's crypto module under Node and WebCrypto in
// pages (`crypto.subtle` with Ed25519: https or localhost); its own failures (a key not held, a
// record that does not verify or decrypt, a replay) reject with LatZeroError CRYPTO. A handler throws HandlerError(value) to
// answer with any JSON value as its error.

/** An error from the server (`code` is the wire code) or from the client itself. */
export class LatZeroError extends Error {
  constructor(code, message, extra = {}) {
    super(`${code}: ${message}`);
    this.name = "LatZeroError";
    this.code = code;
    Object.assign(this, extra);
  }
}

/** Thrown by a handler to answer its caller with `error` (any JSON value) as its error, as it
 * is: a JavaScript caller gets it as LatZeroError HANDLER_ERROR with `error`, a Rust one as
 * `ClientError::Handler(error)`. Any other throw answers {message}. */
export class HandlerError extends Error {
  constructor(error) {
    super(typeof error?.message === "string" ? error.message : describe(error));
    this.name = "HandlerError";
    this.error = error;
  }
}

const PROTOCOL_VERSION = "1.0";
const DEFAULT_PORT = 45227;
const DEFAULT_MAX_FRAME_LEN = 16 * 1024 * 1024;
// A frame the server sends may pass its max_frame_len by this much (PROTOCOL.md §2).
const FRAME_SLACK = 65536;
// The most records one read of a stream may ask for (PROTOCOL.md §7.4).
const MAX_STREAM_READ = 100000;
// Frames written in one turn of the event loop go out at once when they reach this many bytes
// (the Unix socket and TCP under Node).
const WRITE_BATCH = 256 * 1024;
// Unsent bytes at which fire-and-forget sends wait for the connection (`writeBufferLimit`).
const DEFAULT_WRITE_BUFFER_LIMIT = 1024 * 1024;
const isNode = typeof process !== "undefined" && typeof process.versions?.node === "string";
// One encoder for every frame and record (one made per binary frame cost an allocation each).
const utf8 = new TextEncoder();

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
    // Why the connection last dropped, and whether the client is coming back: for the error of
    // a request made meanwhile.
    this._dropped = null;
    this._reconnecting = false;
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
            this._dropped = null;
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
        reply(false, failure(e));
      } catch (unsent) {
        // A HandlerError whose value is not JSON (a BigInt, a cycle) is said so; anything else
        // failing here is the connection gone between the two (see `reply`).
        try {
          reply(false, { message: `handler '${f.process}' threw an error that cannot be sent: ${unsent?.message ?? unsent}` });
        } catch {
          // Not sendable either.
        }
      }
    }
  }

  _send(frame, body) {
    if (this._ws === null || this._ws.readyState !== 1) {
      const why = this._dropped ? ` (${this._dropped})` : "";
      const then = this._reconnecting ? "the client is reconnecting" : "the client does not reconnect";
      throw new LatZeroError("DISCONNECTED", `not connected to the server${why}; the request was not sent; ${then}`, { sent: false });
    }
    const message = body === undefined ? JSON.stringify(frame) : binaryFrame(frame, body);
    // A string's UTF-8 length is at most three bytes per UTF-16 unit: counted only near the limit.
    const max = this._maxFrameLen;
    const len = typeof message !== "string" ? message.length : message.length * 3 <= max ? 0 : utf8.encode(message).length;
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

  /** Attaches a block for reading; resolves with a Block. Under Node, when this process can
   * open the server's file for the block (the same host and user), the Block reads it directly
   * (positioned reads of the file, consistent with the block's seqlock), without a round trip
   * to the server; in a page, with `opts.direct` false, or for a stream, it reads through the
   * server (`Block.whyNotDirect` says why). */
  async blockAttach(pool, blockId, opts = {}) {
    const f = await this._request({ action: "block_attach", pool, block_id: blockId, mode: "read" }, this.options.timeoutMs ?? 30000);
    const fs = isNode && opts.direct !== false ? await import("node:fs") : null;
    return new Block(this, f, fs, opts.direct === false ? "not asked to read it directly" : "a page cannot open the block's file");
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
    // At most the protocol's bound a read (a larger max asks for that many); a read may return
    // fewer than max with more waiting, as it holds only what fits one frame.
    const max = opts.max ?? 1000;
    const frame = { action: "block_read", pool, block_id: blockId, consumer, max: Number.isInteger(max) ? Math.min(max, MAX_STREAM_READ) : max };
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
      throw new LatZeroError("DISCONNECTED", "the connection to the server dropped just after the lock was granted; the lease ended with it", { sent: true });
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
    const closing = this._closing;
    this._closing = undefined;
    if (closing) reason = `${closing.code}: ${closing.message}`;
    // Told by the errors of the requests the drop fails, until the next connection is up.
    this._dropped = reason;
    for (const [id, w] of this._pending) {
      clearTimeout(w.timer);
      w.reject(new LatZeroError("DISCONNECTED", `the connection to the server was lost before the reply arrived (${reason}); the request was sent and may or may not have been carried out (a call may have run)`, { sent: true }));
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
    // Taken over by another connection: coming back would take it back, and the two would flap.
    const reconnecting = !this._closed && this.options.reconnect !== false && closing?.code !== "DUPLICATE_APP";
    this._reconnecting = reconnecting;
    this._emitEvent("disconnected", { reason, reconnecting });
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

  /** Joins an encrypted pool by proving its SigilKey (the key never leaves this JavaScript) and
   * resolves with the EncryptedPool through which this app's payloads and blocks in the pool are
   * sealed and opened. `keys` is a PoolKeys, or the key texts `latzero keys generate` printed.
   * In a page it needs WebCrypto with Ed25519 (NOT_AVAILABLE without it). A wrong SigilKey is
   * PERMISSION_DENIED. The pool is not in `pools`: a handshake cannot join it, so the handle joins
   * it again after a reconnect. */
  async encryptedPool(pool, keys) {
    if (!(keys instanceof PoolKeys)) keys = new PoolKeys(pool, keys);
    if (keys.pool !== pool) throw new LatZeroError("INVALID_OPTIONS", `these keys are for pool '${keys.pool}', not '${pool}'`);
    const handle = new EncryptedPool(this, keys);
    try {
      await handle._join();
    } catch (e) {
      handle.close();
      throw e;
    }
    return handle;
  }

  /** Closes the connection; calls in flight reject with DISCONNECTED. */
  close() {
    this._closed = true;
    // Closed while reconnecting: it no longer is.
    this._reconnecting = false;
    const ws = this._ws;
    if (ws) {
      this._lost("client closed");
      ws.close(1000);
    }
  }
}

// The block file's header (PROTOCOL.md §7.1): where the words a direct read uses lie.
const H_LAYOUT = 8;
const H_VERSION = 32;
const H_SEQ = 40;
const H_WRITER = 48;
const H_USED = 56;
const H_DELETED = 2656;
const BLOCK_MAGIC = "LZBLOCK\0";
// A direct read that keeps meeting writes for this long (ms) is read through the server
// instead, which reads under the block's write side.
const DIRECT_READ_PATIENCE_MS = 50;

/**
 * A memory block attached by `Client.blockAttach`, for reading.
 *
 * `direct` tells whether it is read directly here: Node has no mmap without a native addon, so
 * a direct read is positioned reads of the block's file (the server maps it; tmpfs or the page
 * cache is the same memory), a few system calls, in the order PROTOCOL.md §7.1 gives readers:
 * `seq` (even), the bytes, `version`, `seq` again; a read that met a write is made again, one
 * that keeps meeting them (or a writer that died mid-write) goes through the server. A block the
 * server has deleted rejects with BLOCK_NOT_FOUND. Writes go through the server: a write in
 * place takes the write side by compare-and-swap, which positioned writes cannot do.
 */
export class Block {
  #client;
  #fs;
  #fd = null;
  // One 8-byte word of the header, read in place, and a view to decode it.
  #word = new Uint8Array(8);
  #wordView = new DataView(this.#word.buffer);
  // The header from `seq` to `deleted`, read in place, and a view to decode it.
  #seqToDeleted = new Uint8Array(H_DELETED + 8 - H_SEQ);
  #seqToDeletedView = new DataView(this.#seqToDeleted.buffer);

  constructor(client, attached, fs, whyNot) {
    const info = attached.block ?? {};
    this.#client = client;
    this.#fs = fs;
    this.pool = info.pool;
    this.blockId = info.block_id;
    this.type = info.type ?? "binary";
    this.size = info.size ?? 0;
    // The server's file for the block.
    this.path = attached.path ?? null;
    this.headerLen = attached.header_len ?? 4096;
    this.whyNotDirect = null;
    if (fs === null) {
      this.whyNotDirect = whyNot;
    } else if (this.path === null) {
      this.whyNotDirect = "the server named no file for the block";
    } else if (this.type === "stream") {
      this.whyNotDirect = "a stream's consumers move their cursors: consume through the server";
    } else {
      try {
        this.#fd = fs.openSync(this.path, "r");
        blockFiles.register(this, { fs, fd: this.#fd }, this);
        const head = new Uint8Array(16);
        this.#readAt(head, 0);
        const magic = String.fromCharCode(...head.subarray(0, 8));
        const layout = new DataView(head.buffer).getUint32(H_LAYOUT, true);
        if (magic !== BLOCK_MAGIC || layout !== (attached.layout_version ?? 1) || fs.fstatSync(this.#fd).size < this.headerLen + this.size) {
          throw new Error("not a block file of this layout and size");
        }
      } catch (e) {
        this.close();
        this.whyNotDirect = `cannot read ${this.path} directly: ${e.message}`;
      }
    }
  }

  /** Whether reads go to the block's file directly (else through the server). */
  get direct() {
    return this.#fd !== null;
  }

  /** Closes the block's file; reads go through the server from then on. (A Block collected
   * without it has its file closed then.) */
  close() {
    if (this.#fd === null) return;
    blockFiles.unregister(this);
    this.#fs.closeSync(this.#fd);
    this.#fd = null;
    this.whyNotDirect ??= "closed";
  }

  /** A binary block's bytes from `opts.offset` (`opts.length` of them, or to the end): {data:
   * Uint8Array, version}. A json block's: {document, version}, as `readJson`. */
  async read(opts = {}) {
    if (this.direct && this.type === "binary") {
      const offset = opts.offset ?? 0;
      const length = opts.length ?? this.size - offset;
      if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
        throw new LatZeroError("OUT_OF_RANGE", `${offset}+${length} is outside block ${this.pool}/${this.blockId} of ${this.size} bytes`);
      }
      const got = await this.#consistent(() => length, offset);
      if (got !== null) return got;
    }
    return this.#client.blockRead(this.pool, this.blockId, opts);
  }

  /** A json block's document: {document, version}. */
  async readJson() {
    if (this.direct && this.type === "json") {
      const got = await this.#consistent(() => Math.min(this.#u64(H_USED), this.size), 0);
      if (got !== null) {
        const text = new TextDecoder().decode(got.data);
        try {
          return { document: text === "" ? null : JSON.parse(text), version: got.version };
        } catch (e) {
          // As the server refuses to send it (PROTOCOL.md §7.4).
          throw new LatZeroError("INTERNAL", `the stored document is not a valid JSON document: ${e.message}`);
        }
      }
    }
    return this.#client.blockRead(this.pool, this.blockId);
  }

  /** Writes through the server, as `Client.blockWrite`; resolves with the new version. */
  async write(data, opts = {}) {
    return this.#client.blockWrite(this.pool, this.blockId, data, opts);
  }

  /** Replaces a json block's document through the server; resolves with the new version. */
  async writeJson(document) {
    return this.#client.blockWrite(this.pool, this.blockId, null, { document });
  }

  /** `length()` bytes from `offset` of the data, read with no write overlapping the read:
   * {data, version}, or null when writes kept overlapping it or its writer died mid-write.
   * Every 64 tries it lets the event loop run. */
  async #consistent(length, offset) {
    const start = performance.now();
    for (let tries = 1; ; tries++) {
      if (this.#fd === null) return null;
      // `seq` and `deleted` in one read: in which order the two are loaded does not matter.
      this.#readAt(this.#seqToDeleted, H_SEQ);
      const words = this.#seqToDeletedView;
      if (words.getBigUint64(H_DELETED - H_SEQ, true) !== 0n) {
        throw new LatZeroError("BLOCK_NOT_FOUND", `block ${this.pool}/${this.blockId} was deleted`);
      }
      const s1 = Number(words.getBigUint64(0, true));
      if (s1 % 2 === 0) {
        const data = new Uint8Array(length());
        this.#readAt(data, this.headerLen + offset);
        const version = this.#u64(H_VERSION);
        if (this.#u64(H_SEQ) === s1) return { data, version };
      }
      if (tries % 64 === 0) {
        const writer = this.#u64(H_WRITER);
        if ((writer !== 0 && !pidAlive(writer)) || performance.now() - start > DIRECT_READ_PATIENCE_MS) return null;
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
  }

  /** The header's 8-byte word at `at`, as a Number (exact: the words a reader uses stay far
   * below 2^53). */
  #u64(at) {
    this.#readAt(this.#word, at);
    return Number(this.#wordView.getBigUint64(0, true));
  }

  /** Fills `buf` from the file at `position` (a regular file reads short only at its end). */
  #readAt(buf, position) {
    for (let done = 0; done < buf.length; ) {
      const n = this.#fs.readSync(this.#fd, buf, done, buf.length - done, position + done);
      if (n === 0) throw new LatZeroError("BLOCK_NOT_FOUND", `block ${this.pool}/${this.blockId}: its file ended early`);
      done += n;
    }
  }
}

// The file of a Block collected without `close`: closed then, rather than held until the
// process ends.
const blockFiles = new FinalizationRegistry(({ fs, fd }) => fs.closeSync(fd));

/** Whether process `pid` exists (one of another user's counts as alive). */
function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code !== "ESRCH";
  }
}

// Encrypted pools (PROTOCOL.md §4.6): on Node's crypto module under Node, on WebCrypto in pages
// (`crypto.subtle`, in pages served over https or from localhost, in browsers with Ed25519 —
// Chromium 137+, Firefox 129+, Safari 17+; and under Node with LATZERO_JS_WEBCRYPTO=1). Records
// are sealed and opened as the Rust SDK and the Python client seal them.

const SEAL_MAGIC = Uint8Array.of(0x4c, 0x5a, 0x53, 0x31); // "LZS1"
const SEAL_HEADER_LEN = 4 + 4 + 8 + 12;
const SEAL_TAG_LEN = 16;
const SEAL_SIGNATURE_LEN = 64;
const SEAL_DOMAIN = utf8.encode("latzero-seal-v1\0");
const JOIN_DOMAIN = utf8.encode("latzero-join-v1\0");
// An Ed25519 private key's PKCS #8 form is this, then its 32-byte seed (RFC 8410): WebCrypto
// imports no raw private key.
const ED25519_PKCS8 = Uint8Array.of(0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20);
// How long a sealed message stays acceptable (and its nonce remembered), nanoseconds.
const REPLAY_WINDOW_NS = 300n * 1_000_000_000n;
// How many times an append is sealed again after the server found it sealed before the stream's
// newest record (another writer's append landed first).
const APPEND_TRIES = 8;
const KEY_ROLES = { sigil: "SigilKey", cipher: "CipherShard", seal: "OblivionSeal" };
const U32_MAX = 2 ** 32 - 1;

/** WebCrypto, or NOT_AVAILABLE. */
function subtle() {
  const s = globalThis.crypto?.subtle;
  if (!s) {
    throw new LatZeroError("NOT_AVAILABLE", "encrypted pools need WebCrypto (crypto.subtle): Node 20+, or a page served over https or from localhost");
  }
  return s;
}

/** The primitives on WebCrypto (pages; Node with LATZERO_JS_WEBCRYPTO=1). */
function webPrimitives() {
  const s = subtle();
  const gcm = (iv, aad) => ({ name: "AES-GCM", iv, additionalData: aad });
  return {
    async hkdf(ikm, salt, info) {
      const key = await s.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
      return new Uint8Array(await s.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, key, 256));
    },
    aesKey: (raw) => s.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]),
    encrypt: async (key, iv, aad, plaintext) => new Uint8Array(await s.encrypt(gcm(iv, aad), key, plaintext)),
    async decrypt(key, iv, aad, ciphertext) {
      try {
        return new Uint8Array(await s.decrypt(gcm(iv, aad), key, ciphertext));
      } catch {
        return null;
      }
    },
    async signer(seed) {
      const priv = await s.importKey("pkcs8", concat(ED25519_PKCS8, seed), { name: "Ed25519" }, true, ["sign"]);
      return { priv, pub: fromB64url((await s.exportKey("jwk", priv)).x) };
    },
    sign: async (priv, message) => new Uint8Array(await s.sign({ name: "Ed25519" }, priv, message)),
    verifier: (raw) => s.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]),
    verify: (pub, signature, message) => s.verify({ name: "Ed25519" }, pub, signature, message),
  };
}

/** The same primitives on Node's crypto module: each step synchronous, where WebCrypto's settles
 * a promise from Node's thread pool (an Ed25519 signature took 93 µs through it here, 36 µs
 * through `sign`). */
async function nodePrimitives() {
  const c = await import("node:crypto");
  return {
    hkdf: (ikm, salt, info) => new Uint8Array(c.hkdfSync("sha256", ikm, salt, info, 32)),
    aesKey: (raw) => c.createSecretKey(raw),
    encrypt(key, iv, aad, plaintext) {
      const e = c.createCipheriv("aes-256-gcm", key, iv);
      e.setAAD(aad);
      return concat(e.update(plaintext), e.final(), e.getAuthTag());
    },
    decrypt(key, iv, aad, ciphertext) {
      if (ciphertext.length < SEAL_TAG_LEN) return null;
      const d = c.createDecipheriv("aes-256-gcm", key, iv);
      d.setAAD(aad);
      d.setAuthTag(ciphertext.subarray(ciphertext.length - SEAL_TAG_LEN));
      try {
        return concat(d.update(ciphertext.subarray(0, ciphertext.length - SEAL_TAG_LEN)), d.final());
      } catch {
        return null;
      }
    },
    signer(seed) {
      const priv = c.createPrivateKey({ key: Buffer.from(concat(ED25519_PKCS8, seed)), format: "der", type: "pkcs8" });
      return { priv, pub: fromB64url(c.createPublicKey(priv).export({ format: "jwk" }).x) };
    },
    sign: (priv, message) => new Uint8Array(c.sign(null, message, priv)),
    verifier: (raw) => c.createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: toB64url(raw) }, format: "jwk" }),
    verify: (pub, signature, message) => c.verify(null, message, pub, signature),
  };
}

let chosenPrimitives = null;

/** Runs a step on the primitives (Node's crypto module under Node, unless LATZERO_JS_WEBCRYPTO=1;
 * WebCrypto elsewhere); an algorithm this JavaScript lacks (Ed25519 in an older browser) is
 * NOT_AVAILABLE rather than a bare DOMException. */
async function crypted(step) {
  try {
    chosenPrimitives ??= isNode && process.env.LATZERO_JS_WEBCRYPTO !== "1" ? nodePrimitives() : Promise.resolve().then(webPrimitives);
    return await step(await chosenPrimitives);
  } catch (e) {
    if (e?.name === "NotSupportedError") {
      throw new LatZeroError("NOT_AVAILABLE", `encrypted pools need Ed25519, AES-GCM and HKDF, which this JavaScript's WebCrypto lacks (${e.message})`);
    }
    throw e;
  }
}

const cryptoError = (message) => new LatZeroError("CRYPTO", message);

/** An error's message without the `CODE: ` a LatZeroError's starts with, to quote it in another. */
const reasonOf = (e) => (e instanceof LatZeroError && e.message.startsWith(`${e.code}: `) ? e.message.slice(e.code.length + 2) : String(e?.message ?? e));

// Write verifiers imported, by the bytes the server gave (with WebCrypto an import cost a
// quarter of a verification).
const importedVerifiers = new WeakMap();

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const u32 = (n) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
};

function toB64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Standard base64 (padded) as bytes; null for anything else. */
function fromB64(text) {
  if (typeof text !== "string" || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return null;
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

const toB64url = (bytes) => toB64(bytes).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
const fromB64url = (text) => fromB64(text.replaceAll("-", "+").replaceAll("_", "/") + "=".repeat((4 - (text.length % 4)) % 4));

/** A key text as an error may show it: only the parts that belong before the key (`lzk1`, a
 * role, a generation's digits), as the Rust SDK shows it; anything else may hold a key. */
function redactKey(text) {
  const shown = [];
  const fits = [(p) => p === "lzk1", (p) => Object.hasOwn(KEY_ROLES, p), (p) => /^[0-9]{1,10}$/.test(p)];
  for (const [i, part] of text.split(".").slice(0, 3).entries()) {
    if (!fits[i](part)) break;
    shown.push(part);
  }
  return [...shown, "<redacted>"].join(".");
}

/**
 * An encrypted pool's keys: the texts `latzero keys generate|rotate` printed
 * (`lzk1.<sigil|cipher|seal>.<generation>.<key>`), any subset of them. Joining takes the
 * SigilKey, reading the CipherShard, writing the CipherShard and the OblivionSeal; keys of older
 * generations open records sealed under them. A bad text is INVALID_OPTIONS, naming its shape but
 * never its key; neither JSON nor inspection shows a key.
 */
export class PoolKeys {
  #gens = new Map();
  #derived = new Map();

  constructor(pool, texts) {
    if (typeof texts === "string") texts = [texts];
    this.pool = pool;
    for (const raw of texts ?? []) {
      if (typeof raw !== "string") throw new LatZeroError("INVALID_OPTIONS", `a pool key is text, got ${raw === null ? "null" : typeof raw}`);
      const t = raw.trim();
      const bad = new LatZeroError("INVALID_OPTIONS", `not a LatZero pool key (expected lzk1.sigil|cipher|seal.GENERATION.KEY): ${redactKey(t)}`);
      const parts = t.split(".");
      if (parts.length !== 4 || parts[0] !== "lzk1" || !Object.hasOwn(KEY_ROLES, parts[1]) || !/^[0-9]{1,10}$/.test(parts[2])) throw bad;
      const generation = Number(parts[2]);
      if (generation > U32_MAX || !/^[A-Za-z0-9_-]{43}$/.test(parts[3])) throw bad;
      const key = fromB64url(parts[3]);
      // Canonical, as the Rust SDK takes it: the 43rd character carries no stray bits.
      if (key === null || key.length !== 32 || toB64url(key) !== parts[3]) throw bad;
      if (!this.#gens.has(generation)) this.#gens.set(generation, {});
      this.#gens.get(generation)[parts[1]] = key;
    }
    if (this.#gens.size === 0) throw new LatZeroError("INVALID_OPTIONS", `no keys for pool '${pool}'`);
  }

  /** The keys in a keys file's text (`latzero keys generate POOL --out FILE`): the last word of
   * each line that is neither blank nor a `#` comment, as the Rust SDK reads it. */
  static fromText(pool, text) {
    const lines = text.split("\n").map((l) => l.trim());
    return new PoolKeys(pool, lines.filter((l) => l !== "" && !l.startsWith("#")).map((l) => l.split(/\s+/).pop()));
  }

  /** The keys in a keys file (`latzero keys generate --out FILE`), read as `fromText` reads its
   * text. Under Node; a page reads no files, and gets NOT_AVAILABLE (pass the text to
   * `fromText`). */
  static async fromFile(pool, path) {
    let fs;
    try {
      fs = await import("node:fs/promises");
    } catch {
      throw new LatZeroError("NOT_AVAILABLE", "PoolKeys.fromFile reads files under Node only; in a page, pass the keys' text to PoolKeys.fromText");
    }
    return PoolKeys.fromText(pool, await fs.readFile(path, "utf8"));
  }

  toJSON() {
    return { pool: this.pool, generations: Object.fromEntries([...this.#gens].map(([g, k]) => [g, Object.keys(k).map((r) => KEY_ROLES[r])])) };
  }

  /** The newest key generation held. */
  get latest() {
    return Math.max(...this.#gens.keys());
  }

  /** Whether the key of `role` ("sigil", "cipher" or "seal") of `generation` is held. */
  has(role, generation) {
    return this.#gens.get(generation)?.[role] !== undefined;
  }

  _need(role, generation, what) {
    const key = this.#gens.get(generation)?.[role];
    if (key === undefined) throw cryptoError(`pool '${this.pool}' has no ${KEY_ROLES[role]} for key generation ${generation}; ${what} needs it`);
    return key;
  }

  /** A key derived from one of ours (HKDF-SHA256, salt `latzero/v1/<pool>`, info
   * `<label>/<generation>`) and imported by `make`, once. */
  _derive(role, generation, label, what, make) {
    const id = `${label}/${generation}`;
    if (!this.#derived.has(id)) {
      const key = this._need(role, generation, what);
      const made = crypted(async (p) => make(p, await p.hkdf(key, utf8.encode(`latzero/v1/${this.pool}`), utf8.encode(id))));
      made.catch(() => this.#derived.delete(id));
      this.#derived.set(id, made);
    }
    return this.#derived.get(id);
  }

  _cipher(generation, what) {
    return this._derive("cipher", generation, "aes-256-gcm", what, (p, k) => p.aesKey(k));
  }

  _signer(role, generation, label, what) {
    return this._derive(role, generation, label, what, (p, seed) => p.signer(seed));
  }

  _writer(generation) {
    return this._signer("seal", generation, "write-ed25519", "writing (signing)");
  }

  _joiner(generation) {
    return this._signer("sigil", generation, "join-ed25519", "joining");
  }

  /** The 32-byte Ed25519 public key the server checks writes of `generation` with (needs the
   * OblivionSeal). */
  async writeVerifier(generation) {
    return (await this._writer(generation)).pub;
  }
}

let lastSeq = 0n;

/** The writer's clock in nanoseconds, strictly increasing in this JavaScript (PROTOCOL.md §4.6),
 * to the microsecond where `performance` gives it: writers to one stream whose records were
 * sealed in the same millisecond would otherwise take turns being refused as stale. */
function nextSeq() {
  const ms = globalThis.performance ? performance.timeOrigin + performance.now() : Date.now();
  const now = BigInt(Math.floor(ms * 1000)) * 1000n;
  lastSeq = now > lastSeq ? now : lastSeq + 1n;
  return lastSeq;
}

const sealAad = (pool, ctx, header) => concat(utf8.encode(pool), [0], utf8.encode(ctx), [0], header);
const signedBytes = (aad, body) => concat(SEAL_DOMAIN, u32(aad.length), aad, body);

/** `plaintext` (bytes) as a sealed record for `ctx`: encrypted with the CipherShard, signed with
 * the OblivionSeal, under the newest generation held. */
async function seal(keys, ctx, plaintext) {
  const generation = keys.latest;
  const aes = await keys._cipher(generation, "encrypting");
  const { priv } = await keys._writer(generation);
  const nonce = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const header = new Uint8Array(SEAL_HEADER_LEN);
  header.set(SEAL_MAGIC);
  const view = new DataView(header.buffer);
  view.setUint32(4, generation);
  view.setBigUint64(8, nextSeq());
  header.set(nonce, 16);
  const aad = sealAad(keys.pool, ctx, header);
  return crypted(async (p) => {
    const body = concat(header, await p.encrypt(aes, nonce, aad, plaintext));
    return concat(body, await p.sign(priv, signedBytes(aad, body)));
  });
}

/** A sealed record's {plaintext, generation, seq, nonce}: its signature verified against the
 * generation's write verifier first, then decrypted. CRYPTO for anything else. */
async function open(keys, ctx, sealed, verifiers) {
  if (sealed.length < SEAL_HEADER_LEN + SEAL_TAG_LEN + SEAL_SIGNATURE_LEN || SEAL_MAGIC.some((b, i) => sealed[i] !== b)) {
    throw cryptoError("not a sealed record");
  }
  const view = new DataView(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  const generation = view.getUint32(4);
  const seq = view.getBigUint64(8);
  const nonce = sealed.slice(16, 28);
  const body = sealed.subarray(0, sealed.length - SEAL_SIGNATURE_LEN);
  const signature = sealed.subarray(sealed.length - SEAL_SIGNATURE_LEN);
  const verifier = verifiers.get(generation);
  if (verifier === undefined) throw cryptoError(`unknown key generation ${generation}`);
  const aad = sealAad(keys.pool, ctx, sealed.subarray(0, SEAL_HEADER_LEN));
  const ok = await crypted(async (p) => {
    let pub = importedVerifiers.get(verifier);
    if (pub === undefined) {
      pub = await p.verifier(verifier);
      importedVerifiers.set(verifier, pub);
    }
    return p.verify(pub, signature, signedBytes(aad, body));
  });
  if (!ok) throw cryptoError("the record's signature does not verify: it was not written by a holder of the OblivionSeal, or it was altered");
  const aes = await keys._cipher(generation, "decrypting");
  const plaintext = await crypted((p) => p.decrypt(aes, nonce, aad, body.subarray(SEAL_HEADER_LEN)));
  if (plaintext === null) throw cryptoError("the record does not decrypt with this CipherShard (wrong key, or another pool or context)");
  return { plaintext, generation, seq, nonce };
}

/** What a reader remembers to refuse replays (the Rust SDK's ReplayGuard): the newest record
 * read of each block and stream, and the messages of the last five minutes. */
class ReplayGuard {
  #last = new Map();
  #seen = new Set();
  #order = [];

  block(ctx, seq) {
    const last = this.#last.get(ctx) ?? 0n;
    if (seq < last) throw cryptoError(`replayed record rejected: ${ctx} holds a record sealed at ${seq} ns, older than one already read (${last} ns)`);
    this.#last.set(ctx, seq);
  }

  stream(ctx, seq) {
    const last = this.#last.get(ctx) ?? 0n;
    if (seq <= last) throw cryptoError(`replayed record rejected: ${ctx} holds a record sealed at ${seq} ns, not after one already read (${last} ns)`);
    this.#last.set(ctx, seq);
  }

  message(seq, nonce) {
    const now = BigInt(Date.now()) * 1_000_000n;
    while (this.#order.length > 0 && this.#order[0].seq + REPLAY_WINDOW_NS < now) this.#seen.delete(this.#order.shift().key);
    if (seq + REPLAY_WINDOW_NS < now || seq > now + REPLAY_WINDOW_NS) throw cryptoError("replayed record rejected: sealed outside the replay window");
    const key = `${seq}/${toB64(nonce)}`;
    if (this.#seen.has(key)) throw cryptoError("replayed record rejected: this message was already delivered");
    this.#seen.add(key);
    this.#order.push({ seq, key });
  }
}

/** `value` as JSON bytes; INVALID_JSON for what JSON.stringify refuses (a BigInt, a cycle). */
function jsonBytes(value) {
  try {
    return utf8.encode(JSON.stringify(value === undefined ? null : value));
  } catch (e) {
    throw new LatZeroError("INVALID_JSON", `not sent: the value is not JSON: ${e.message}`);
  }
}

/** An opened record's JSON. */
function openedJson(bytes) {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new LatZeroError("INVALID_JSON", `an opened record is not JSON: ${e.message}`);
  }
}

/**
 * An encrypted pool this app joined with its keys (`Client.encryptedPool`): calls, emits,
 * handlers, binary blocks and stream records whose contents are sealed end to end, as the Rust
 * SDK and the Python client seal them (each opens the others' records). The server routes and
 * stores only sealed records. Failures of the sealing itself (a key not held, a record that does
 * not verify or decrypt, a replay) reject with LatZeroError CRYPTO.
 *
 * After a reconnect the handle proves the SigilKey again and re-joins; its operations wait for
 * that first, and reject with its error if it failed. `close()` stops the re-joining (the app
 * stays in the pool until it leaves or disconnects).
 */
export class EncryptedPool {
  #client;
  #keys;
  #writes = new Map();
  #guard = new ReplayGuard();
  #appending = Promise.resolve();
  #rejoining = null;
  #closed = false;

  constructor(client, keys) {
    this.#client = client;
    this.#keys = keys;
    client.on("reconnected", () => {
      if (this.#closed) return;
      this.#rejoining = this._join();
      // Told here too, for a handle nobody uses until the next reconnect.
      this.#rejoining.catch((e) => this.#client._closed || console.warn(`latzero: could not re-join encrypted pool '${this.pool}': ${e.message}`));
    });
    // Taken out of the pool (its owner removed it): not joined again.
    client.on("pool_left", (d) => {
      if (d.pool === this.pool) this.#closed = true;
    });
  }

  get pool() {
    return this.#keys.pool;
  }

  /** Stops re-joining after reconnects. */
  close() {
    this.#closed = true;
  }

  /** Waits for a re-join under way; rejects with its error if it failed. */
  async _ready() {
    if (this.#rejoining === null) return;
    try {
      await this.#rejoining;
    } catch (e) {
      throw new LatZeroError(e.code ?? "CRYPTO", `could not re-join encrypted pool '${this.pool}' after a reconnect: ${reasonOf(e)}`);
    }
  }

  /** Proves the SigilKey for the pool's newest key generation and joins. The write verifiers the
   * server gives are checked against our own OblivionSeal where we hold it, before the proof is
   * sent. */
  async _join() {
    const client = this.#client;
    const keys = this.#keys;
    const pool = this.pool;
    const timeout = client.options.timeoutMs ?? 30000;
    const ch = await client._request({ action: "pool_challenge", pool }, timeout);
    const bad = (what) => new LatZeroError("PROTOCOL", `pool_challenge answer without a valid \`${what}\``);
    const generation = ch.generation;
    if (!Number.isInteger(generation) || generation < 0 || generation > U32_MAX) throw bad("generation");
    const nonce = fromB64(ch.nonce);
    if (nonce === null) throw bad("nonce");
    if (typeof ch.write_verifiers !== "object" || ch.write_verifiers === null) throw bad("write_verifiers");
    const writes = new Map();
    for (const [g, v] of Object.entries(ch.write_verifiers)) {
      const gen = Number(g);
      const key = fromB64(v);
      if (!/^[0-9]{1,10}$/.test(g) || gen > U32_MAX || key === null || key.length !== 32) throw bad("write_verifiers");
      if (keys.has("seal", gen)) {
        const ours = await keys.writeVerifier(gen);
        if (ours.some((b, i) => b !== key[i])) {
          throw cryptoError(`the server's write verifier for key generation ${gen} does not match our OblivionSeal; refusing to trust it`);
        }
      }
      writes.set(gen, key);
    }
    const app = utf8.encode(client.appId);
    const poolBytes = utf8.encode(pool);
    const message = concat(JOIN_DOMAIN, u32(poolBytes.length), poolBytes, u32(app.length), app, u32(generation), nonce);
    const { priv } = await keys._joiner(generation);
    const signature = await crypted((p) => p.sign(priv, message));
    await client._request({ action: "pool_prove", pool, signature: toB64(signature) }, timeout);
    this.#writes = writes;
  }

  // Messages.

  async _sealValue(ctx, value) {
    return toB64(await seal(this.#keys, ctx, jsonBytes(value)));
  }

  /** A sealed message (`data` as it came on the wire), opened once. */
  async _openMessage(ctx, data) {
    const sealed = fromB64(data);
    if (sealed === null) throw cryptoError("not a sealed record");
    const o = await open(this.#keys, ctx, sealed, this.#writes);
    this.#guard.message(o.seq, o.nonce);
    return openedJson(o.plaintext);
  }

  /** A call's error: a handler's sealed error opened (or why it cannot be); anything else as it
   * came (the server's own errors are plaintext). */
  async _openError(trigger, e) {
    const err = e?.error;
    if (e?.code !== "HANDLER_ERROR" || typeof err !== "object" || err === null || Object.keys(err).join() !== "sealed") return e;
    try {
      return handlerError(await this._openMessage(`error/${trigger}`, err.sealed));
    } catch (why) {
      return why;
    }
  }

  /** Calls a trigger with a sealed payload and opens the sealed answer (needs the CipherShard and
   * the OblivionSeal). A handler's error comes sealed too, and is opened into LatZeroError
   * HANDLER_ERROR; the server's own errors (TIMEOUT, NO_HANDLER) are plaintext. opts: as
   * Client.call. */
  async call(trigger, data = null, opts = {}) {
    await this._ready();
    const sealed = await this._sealValue(`msg/${trigger}`, data);
    let answer;
    try {
      answer = await this.#client.call(this.pool, trigger, sealed, opts);
    } catch (e) {
      throw await this._openError(trigger, e);
    }
    return this._openMessage(`reply/${trigger}`, answer);
  }

  /** Client.broadcast with a sealed payload: an array of `{appId, response}` or `{appId,
   * error}`, each answer and error opened (a handler's sealed error into HANDLER_ERROR; an
   * answer that does not open is that handler's error, CRYPTO). opts: as Client.broadcast. */
  async broadcast(trigger, data = null, opts = {}) {
    await this._ready();
    const sealed = await this._sealValue(`msg/${trigger}`, data);
    const replies = await this.#client.broadcast(this.pool, trigger, sealed, opts);
    const out = [];
    for (const r of replies) {
      if (r.error !== undefined) {
        out.push({ appId: r.appId, error: await this._openError(trigger, r.error) });
        continue;
      }
      try {
        out.push({ appId: r.appId, response: await this._openMessage(`reply/${trigger}`, r.response) });
      } catch (e) {
        if (!(e instanceof LatZeroError)) throw e;
        out.push({ appId: r.appId, error: e });
      }
    }
    return out;
  }

  /** Emits a sealed payload (needs the CipherShard and the OblivionSeal); as Client.emit. */
  async emit(trigger, data = null, opts = {}) {
    await this._ready();
    return this.#client.emit(this.pool, trigger, await this._sealValue(`msg/${trigger}`, data), opts);
  }

  /** Handles a trigger: calls and emits in this pool reach `fn` opened (verified, decrypted,
   * checked for replays; anything else is refused with a handler error and never reaches `fn`),
   * and its answer is sealed (answering needs the OblivionSeal), and so is its error: a handler
   * that cannot seal answers an error saying so, without its error's contents. In other pools
   * `fn` sees payloads as they are. */
  async handle(trigger, fn) {
    mustCall(fn, "a handler");
    const pool = this.pool;
    await this.#client.handle(trigger, async (req) => {
      if (req.pool !== pool) return fn(req);
      try {
        req.data = await this._openMessage(`msg/${req.process}`, req.data);
      } catch (e) {
        throw new HandlerError({ message: `rejected sealed payload: ${reasonOf(e)}` });
      }
      let out;
      try {
        out = await fn(req);
      } catch (e) {
        let sealed;
        try {
          sealed = await this._sealValue(`error/${req.process}`, failure(e));
        } catch (why) {
          throw new HandlerError({ message: `the handler failed, and cannot seal its error: ${reasonOf(why)}` });
        }
        throw new HandlerError({ sealed });
      }
      try {
        return await this._sealValue(`reply/${req.process}`, out);
      } catch (e) {
        throw new HandlerError({ message: `cannot seal the answer: ${reasonOf(e)}` });
      }
    });
  }

  // Blocks.

  /** Writes `plaintext` (a Uint8Array) as the binary block's sealed record, through the server
   * (length-prefixed at offset 0: the block must hold 4 + 28 + plaintext + 16 + 64 bytes).
   * Resolves with the block's version. */
  async writeBlock(blockId, plaintext) {
    await this._ready();
    const sealed = await seal(this.#keys, `block/${blockId}`, plaintext);
    return this.#client.blockWrite(this.pool, blockId, concat(u32(sealed.length), sealed));
  }

  /** Reads, verifies and decrypts the binary block's sealed record: {data, version}. `block` is
   * its id (read through the server) or a Block of this pool from `Client.blockAttach` (read
   * from its file directly where `direct`). A record older than one this handle already read (a
   * replayed old write) is refused. */
  async readBlock(block) {
    await this._ready();
    let blockId = block;
    let read = (opts) => this.#client.blockRead(this.pool, blockId, opts);
    if (block instanceof Block) {
      if (block.pool !== this.pool) {
        throw new LatZeroError("INVALID_OPTIONS", `block ${block.pool}/${block.blockId} is not in the encrypted pool ${JSON.stringify(this.pool)}`);
      }
      blockId = block.blockId;
      read = (opts) => block.read(opts);
    }
    const ctx = `block/${blockId}`;
    for (let i = 0; i < 3; i++) {
      const { data: prefix } = await read({ length: 4 });
      const n = prefix.length < 4 ? 0 : new DataView(prefix.buffer, prefix.byteOffset, 4).getUint32(0);
      if (n === 0) throw cryptoError("not a sealed record (the block holds none)");
      let got;
      try {
        got = await read({ length: 4 + n });
      } catch (e) {
        if (e.code !== "OUT_OF_RANGE") throw e;
        throw cryptoError(`not a sealed record: its length prefix (${n} bytes) does not fit (${reasonOf(e)})`);
      }
      if (got.data.subarray(0, 4).some((b, j) => b !== prefix[j])) continue; // rewritten between the two reads
      const o = await open(this.#keys, ctx, got.data.subarray(4), this.#writes);
      this.#guard.block(ctx, o.seq);
      return { data: o.plaintext, version: got.version };
    }
    throw new LatZeroError("PROTOCOL", "the block kept changing while being read; try again");
  }

  /** Writes `document` as JSON into a binary block of the pool, as its sealed record
   * (writeBlock): json blocks are not available in encrypted pools, since the server cannot check
   * a document it cannot read. Resolves with the block's version. */
  async writeJson(blockId, document) {
    return this.writeBlock(blockId, jsonBytes(document));
  }

  /** The document writeJson sealed into the block (its id, or a Block as for readBlock):
   * {document, version}. */
  async readJson(block) {
    const { data, version } = await this.readBlock(block);
    return { document: openedJson(data), version };
  }

  /** Appends `plaintext` (a Uint8Array) to a stream block of the pool as one sealed record,
   * through the server, which checks that it was sealed after the stream's newest record; one
   * that another writer's append overtook is sealed again (up to 8 times in all). One append of
   * this handle is in flight at a time, so its records leave in the order they were sealed.
   * Resolves with {index, version}. */
  async append(blockId, plaintext) {
    await this._ready();
    const ctx = `stream/${blockId}`;
    const mine = this.#appending.then(async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await this.#client.blockAppend(this.pool, blockId, await seal(this.#keys, ctx, plaintext));
        } catch (e) {
          if (e.code !== "STALE_RECORD" || attempt === APPEND_TRIES) throw e;
        }
      }
    });
    this.#appending = mine.catch(() => {});
    return mine;
  }

  /** Reads up to `opts.max` (1000) records of a stream block from the named consumer's cursor, as
   * Client.blockConsume, each verified and decrypted: `records` holds, in stream order, each
   * record's plaintext (a Uint8Array) or, in its place, the LatZeroError CRYPTO it was refused
   * with (not sealed by a holder of the OblivionSeal, altered, sealed for another stream, or not
   * sealed after the last record this handle read from the stream). The cursor has moved past
   * all of them. */
  async consume(blockId, consumer, opts = {}) {
    await this._ready();
    const ctx = `stream/${blockId}`;
    const r = await this.#client.blockConsume(this.pool, blockId, consumer, opts);
    const records = [];
    for (const sealed of r.records) {
      try {
        const o = await open(this.#keys, ctx, sealed, this.#writes);
        this.#guard.stream(ctx, o.seq);
        records.push(o.plaintext);
      } catch (e) {
        if (!(e instanceof LatZeroError)) throw e;
        records.push(e);
      }
    }
    return { ...r, records };
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

/** `value` as JSON text for a message, or as a string where it is not JSON (a BigInt, a cycle). */
function describe(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** A handler's throw as the error its caller receives. */
function failure(e) {
  return e instanceof HandlerError ? e.error : { message: e?.message ?? String(e) };
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
  const h = utf8.encode(JSON.stringify(header));
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
