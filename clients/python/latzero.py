"""LatZero for Python: an asyncio client over the server's Unix socket or TCP port.

One module, standard library only (Python 3.10+: earlier asyncio streams may not be drained
from several tasks at once), but for encrypted pools, which need the `cryptography` package.
It speaks docs/PROTOCOL.md: length-prefixed JSON frames, correlated calls with the server's deadlines and error codes (`call`, and `broadcast` to every
handler at once), handlers (`handle`, `unhandle`), emits (with the server's receipt, or
fire-and-forget with `confirm=False`), presence events, and reconnecting with backoff.

The frames sent in one turn of the event loop go out in one write, the frames of one read are
dispatched in turn, and a handler runs in the read loop (a coroutine until it first waits, then
in a task of its own): ./scripts/bench-python.sh measures it against nats-py.

    import asyncio, latzero

    async def main():
        lz = await latzero.connect("worker", pools=["demo"])
        await lz.handle("double", lambda req: req.data["x"] * 2)
        print(await lz.call("demo", "double", {"x": 21}))
        await lz.wait_closed()

    asyncio.run(main())

Where it connects: a `latzero://` URL in place of the app id (PROTOCOL.md §12), `socket=` (a
Unix socket path), or `host=`/`port=`; without them, the default
data dir's socket (`$LATZERO_DATA_DIR` or `~/.latzero`, then `latzero.sock`) if it exists, else
`$LATZERO_HOST:$LATZERO_PORT` (127.0.0.1:45227), as the Rust SDK does. A server started with
`--tls` is reached over TCP with `tls_fingerprint=` (the SHA-256 it prints and writes to
server.json: the certificate must hash to it, whoever signed it) or `tls_ca=` (a CA file: the
chain must lead to it and name the host).

Memory blocks are used through the server, in binary frames, and in place when mapped:
`block_attach` returns a Block that maps the block's file when this process can open it (the
same host and user, on x86-64), and reads it there without a round trip, consistent with the
block's seqlock (PROTOCOL.md §7.1); `Block.view()` is the live bytes, zero-copy. Attached with
`write=True`, `Block.write` (binary) and `Block.write_json` (json) write in place as the
seqlock's writers do (the write side taken with libatomic's compare-and-swap, from the
libatomic1 package) and tell the server, so that watchers hear of it; without libatomic, and
for streams, writes go through the server.
`block_create`, `block_write`, `block_read` and `block_delete` for any block; `block_append`
and `block_consume` for stream blocks; `block_lock`/`block_unlock` for leases (a `lock_expired`
event tells when one ran out, or was lost with the connection); `block_watch` calls a function with every change, and resumes
after a reconnect from the last version seen (a block gone by then ends the watch with a
`deleted` event). A lease is the connection's: it does not survive a reconnect.

A handler is a plain function, run in the client's read loop to its end (the fastest; it must
not block), or a coroutine function, run as a task of its own (started eagerly on Python 3.12
and later), so that `asyncio.timeout`, `asyncio.current_task()` and context variables in it are
its own.

Encrypted pools (PROTOCOL.md §4.6): `Client.encrypted_pool(pool, keys)` proves the pool's
SigilKey and returns an EncryptedPool whose calls, emits, handlers, blocks and stream records
are sealed and opened as the Rust SDK's are (each opens the other's records); its own failures
(a key not held, a record that does not verify or decrypt, a replay) raise LatZeroError CRYPTO.

Errors from the server raise LatZeroError with the wire `code` (`NO_HANDLER`, `TIMEOUT`, ...);
a handler's own error raises it with code `HANDLER_ERROR` and the handler's value in `error`
(a handler raises HandlerError(value) to answer with any JSON value as its error).
When the connection drops, calls in flight raise `DISCONNECTED` (its message says why it
dropped, as the `disconnected` event does; `sent` is False on one made while no connection was
up, which the server never saw) and the client reconnects,
handshaking with the pools and triggers it has; a pool or trigger the server refuses by then is
dropped and reported (`pool_left`, `trigger_refused` events) rather than keeping it out.
"""

import asyncio
import base64
import collections
import ctypes
import functools
import hashlib
import inspect
import itertools
import json
import logging
import math
import mmap
import os
import platform
import random
import ssl
import struct
import sys
import time
import urllib.parse

_log = logging.getLogger("latzero")
# What a DISCONNECTED error says of a request that left before its connection was lost.
_MAYBE_CARRIED_OUT = "the request was sent and may or may not have been carried out (a call may have run)"

__all__ = ["LatZeroError", "HandlerError", "Request", "Client", "Block", "PoolKeys", "EncryptedPool", "connect",
           "parse_url"]

PROTOCOL_VERSION = "1.0"
DEFAULT_PORT = 45227
DEFAULT_MAX_FRAME_LEN = 16 * 1024 * 1024
# A frame the server sends may pass its max_frame_len by this much (PROTOCOL.md §2).
FRAME_SLACK = 65536
# The most records one read of a stream may ask for (PROTOCOL.md §7.4).
MAX_STREAM_READ = 100_000
# Python 3.12 starts a task eagerly on asking (`asyncio.Task(..., eager_start=True)`): its
# first step runs at once, as the task's own. Before it, a coroutine handler waits for a turn of
# the loop to start.
_EAGER_TASKS = sys.version_info >= (3, 12)


class LatZeroError(Exception):
    """An error from the server (`code` is the wire code) or from the client itself."""

    def __init__(self, code, message, **extra):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.handler = extra.get("handler")
        self.handler_may_still_run = extra.get("handler_may_still_run")
        self.error = extra.get("error")
        # DISCONNECTED: whether the request left this client (False: the server never saw it,
        # and it is safe to send again once reconnected).
        self.sent = extra.get("sent")


class HandlerError(Exception):
    """Raised by a handler to answer its caller with `error` (any JSON value) as its error, as
    it is: a Python caller gets it as LatZeroError HANDLER_ERROR with `error`, a Rust one as
    `ClientError::Handler(error)`. Any other exception answers {"message": str(e)}."""

    def __init__(self, error):
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(message if isinstance(message, str) else repr(error))
        self.error = error


class Request:
    """A delivered call or emit, as a handler sees it."""

    __slots__ = ("data", "pool", "process", "origin")

    def __init__(self, data, pool, process, origin):
        self.data = data
        self.pool = pool
        self.process = process
        self.origin = origin

    def __repr__(self):
        return f"Request(process={self.process!r}, pool={self.pool!r}, origin={self.origin!r}, data={self.data!r})"


def _parse_fingerprint(text):
    """A SHA-256 fingerprint as bytes: 64 hex digits, colons and a `sha256:` prefix allowed."""
    t = text.strip()
    for prefix in ("sha256:", "SHA256:"):
        if t.startswith(prefix):
            t = t[len(prefix):]
    try:
        raw = bytes.fromhex(t.replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise LatZeroError("INVALID_FINGERPRINT", f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return raw


def _tls_context(fingerprint, ca):
    """The TLS context for a server verified by its certificate's fingerprint or by a CA."""
    if fingerprint is not None and ca is not None:
        raise LatZeroError("INVALID_OPTIONS", "give tls_fingerprint or tls_ca, not both")
    if ca is not None:
        ctx = ssl.create_default_context(cafile=ca)
    else:
        # Pinned: the certificate is checked against the fingerprint once connected, not by a
        # chain (the generated one is self-signed).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _default_endpoint():
    data_dir = os.environ.get("LATZERO_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".latzero")
    sock = os.path.join(data_dir, "latzero.sock")
    if os.path.exists(sock):
        return ("unix", sock)
    host = os.environ.get("LATZERO_HOST", "127.0.0.1")
    port = int(os.environ.get("LATZERO_PORT", DEFAULT_PORT))
    return ("tcp", (host, port))


async def connect(app_id, **options):
    """Connects and handshakes; returns a Client once the server has acknowledged.

    `app_id` is the app id, or a `latzero://` URL as the Rust SDK and the CLI take it
    (PROTOCOL.md §12: `latzero://APP_ID[@HOST:PORT][?socket=PATH&pools=A,B]`,
    `latzeros://APP_ID@HOST:PORT?fingerprint=SHA256` or `?ca=PATH` for TLS); an option the URL
    gives may not be given again.
    The first handshake is strict: every pool and trigger asked for, or a LatZeroError.
    options: socket, host, port, tls_fingerprint, tls_ca, pools, triggers, meta,
    auth ({"token": ...} or {"jwt": ...}), takeover, ephemeral, timeout (seconds per call,
    default 30), reconnect (default True), backoff_min (0.1 s), backoff_max (5 s), close_grace
    (5 s: how long close() waits for what was queued to be written).
    """
    if app_id.startswith(("latzero://", "latzeros://")):
        from_url = parse_url(app_id)
        app_id = from_url.pop("app_id")
        twice = sorted(set(from_url) & set(options))
        if twice:
            raise LatZeroError("INVALID_URL", f"{', '.join(twice)} given both in the URL and as an option")
        options.update(from_url)
    client = Client(app_id, **options)
    await client._open(partial=False)
    client._reader_task = asyncio.ensure_future(client._run())
    return client


def parse_url(url):
    """A `latzero://` or `latzeros://` URL (PROTOCOL.md §12) as connect()'s options: app_id,
    and those of socket, host, port, pools, tls_fingerprint and tls_ca it gives. Raises
    LatZeroError INVALID_URL for anything §12 refuses."""
    def bad(why):
        return LatZeroError("INVALID_URL", f"{url!r}: {why}")

    secure = url.startswith("latzeros://")
    if not secure and not url.startswith("latzero://"):
        raise bad("not a latzero URL; expected latzero://APP_ID[@HOST:PORT][?socket=PATH&pools=A,B]")
    rest = url.split("://", 1)[1]
    main, _, query = rest.partition("?")
    main = main.rstrip("/")
    app, at, host = main.partition("@")
    if not app:
        raise bad("no app id")
    out = {"app_id": app}
    if at and host:
        name, colon, port = host.rpartition(":")
        if not colon or not name or not port.isdigit() or int(port) > 65535:
            raise bad(f"'{host}' is not a valid HOST:PORT")
        out["host"], out["port"] = name.strip("[]"), int(port)
    pools = []
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key == "socket":
            if "host" in out:
                raise bad("give either @HOST:PORT or ?socket=PATH, not both")
            out["socket"] = value
        elif key in ("pools", "pool"):
            pools += [p for p in value.split(",") if p]
        elif key in ("fingerprint", "ca"):
            if not secure:
                raise bad("fingerprint and ca are for latzeros:// (TLS) URLs")
            if "tls_fingerprint" in out or "tls_ca" in out:
                raise bad("give one of fingerprint and ca, once")
            if key == "fingerprint":
                _parse_fingerprint(value)
                out["tls_fingerprint"] = value
            else:
                out["tls_ca"] = value
        else:
            raise bad(f"unknown URL parameter '{key}'; known: socket, pools, fingerprint, ca")
    if pools:
        out["pools"] = pools
    if secure:
        if "socket" in out:
            raise bad("latzeros:// is TLS over TCP; the Unix socket is local and owner-only, use latzero://")
        if "tls_fingerprint" not in out and "tls_ca" not in out:
            raise bad("latzeros:// needs ?fingerprint=SHA256 (printed by the server at start) or ?ca=PATH to verify the server")
        out.setdefault("host", "127.0.0.1")
        out.setdefault("port", DEFAULT_PORT)
    return out


class Client:
    def __init__(self, app_id, socket=None, host=None, port=None, pools=(), triggers=(), meta=None,
                 auth=None, takeover=False, ephemeral=False, timeout=30.0, reconnect=True,
                 backoff_min=0.1, backoff_max=5.0, tls_fingerprint=None, tls_ca=None, close_grace=5.0):
        tls = tls_fingerprint is not None or tls_ca is not None
        if socket is not None:
            if tls:
                raise LatZeroError("INVALID_OPTIONS", "TLS is served on the TCP port; the Unix socket is plain (give host/port)")
            self._endpoint = ("unix", socket)
        elif host is not None or port is not None or tls:
            self._endpoint = ("tcp", (host or "127.0.0.1", port or DEFAULT_PORT))
        else:
            self._endpoint = _default_endpoint()
        self._tls = _tls_context(tls_fingerprint, tls_ca) if tls else None
        self._pin = _parse_fingerprint(tls_fingerprint) if tls_fingerprint is not None else None
        self.app_id = app_id
        self.pools = set(pools)
        self.triggers = set(triggers)
        self._presence = set()
        # Watched blocks: (pool, block_id) -> {"fn", "seen", "created_at"}.
        self._watches = {}
        # Lock leases held: (pool, block_id) -> mode. One that ends other than by block_unlock
        # is told with a `lock_expired` event, also when the connection drops.
        self._leases = {}
        # Connections dropped so far: a grant read just before a drop, taken up after it, ended
        # with its connection and is not taken for a lease held.
        self._drops = 0
        # Handlers' tasks still running (the loop keeps only weak references to tasks).
        self._tasks = set()
        self._meta = meta
        self._auth = auth
        self._takeover = takeover
        self._ephemeral = ephemeral
        _ms(timeout, "timeout")  # checked here, not at the first call
        self._timeout = timeout
        _ms(close_grace, "close_grace", zero=True)
        self._close_grace = close_grace
        self._reconnect = reconnect
        self._backoff = (backoff_min, backoff_max)
        self._handlers = {}
        # Requests waiting for their answer: id -> (future, deadline, timeout). One sweep
        # ends those past their deadline (a timer for each call cost more than the call's
        # JSON).
        self._pending = {}
        self._sweeper = None
        self._listeners = {}
        self._ids = itertools.count(1)
        self._reader = None
        self._writer = None
        # Why the connection last dropped: told by the errors of the requests the drop failed,
        # until the next connection is up.
        self._dropped = None
        self._closed = False
        self._done = asyncio.get_running_loop().create_future()
        self._max_frame_len = DEFAULT_MAX_FRAME_LEN
        self._closing = None
        self._reader_task = None
        self._loop = asyncio.get_running_loop()
        # Frames sent in this turn of the event loop, written together at its end, and their
        # bytes.
        self._out = []
        self._out_bytes = 0

    # Events.

    def on(self, event, fn):
        """Listens for `disconnected`, `reconnected`, `reconnect_refused`, `pool_left`,
        `trigger_refused`, `presence`, `lock_expired` and `server_error` events: fn(dict). Any
        other name is INVALID_OPTIONS (a misspelt one would never fire)."""
        if event not in EVENTS:
            raise LatZeroError("INVALID_OPTIONS", f"no event {event!r}; the events are {', '.join(EVENTS)}")
        _callable(fn, "an event listener")
        self._listeners.setdefault(event, []).append(fn)
        return self

    def _event(self, event, detail):
        for fn in self._listeners.get(event, []):
            try:
                fn(detail)
            except Exception as e:  # a listener's bug must not stop the client
                _log.warning("a %r listener raised %r", event, e)

    # The connection.

    async def _open(self, partial):
        kind, where = self._endpoint
        try:
            if kind == "unix":
                reader, writer = await asyncio.open_unix_connection(where)
            elif self._tls is not None:
                reader, writer = await asyncio.open_connection(*where, ssl=self._tls, server_hostname=where[0])
            else:
                reader, writer = await asyncio.open_connection(*where)
        except ssl.SSLError as e:
            raise LatZeroError("TLS", f"TLS with {where[0]}:{where[1]} failed: {e}; does the server serve TLS (--tls)?") from None
        except OSError as e:
            raise LatZeroError("CONNECT", f"cannot connect to {kind}:{where}: {e}; is the server running (`latzero start`)?") from None
        if self._pin is not None:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            got = hashlib.sha256(der).digest()
            if got != self._pin:
                writer.close()
                raise LatZeroError("TLS", f"the server's certificate has fingerprint {got.hex(':').upper()}, not the pinned {self._pin.hex(':').upper()}")
        hs = {
            "action": "handshake",
            "id": 0,
            "app_id": self.app_id,
            "pools": sorted(self.pools),
            "triggers": sorted(self.triggers),
            "protocol_version": PROTOCOL_VERSION,
        }
        if self._meta is not None:
            hs["meta"] = self._meta
        if self._auth is not None:
            hs["auth"] = self._auth
        if self._takeover:
            hs["takeover"] = True
        if self._ephemeral:
            hs["ephemeral"] = True
        if partial:
            hs["partial"] = True
        writer.write(_frame(hs))
        try:
            await writer.drain()
            ack = await asyncio.wait_for(_read_json(reader, self._max_frame_len), self._timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            writer.close()
            raise LatZeroError("CONNECT", f"the handshake with {kind}:{where} failed: {e!r}") from None
        except ValueError as e:
            writer.close()
            raise LatZeroError("PROTOCOL", f"the handshake answer from {kind}:{where} does not read: {e}") from None
        if ack.get("action") != "handshake_ack":
            writer.close()
            raise LatZeroError(ack.get("code", "PROTOCOL"), ack.get("message", json.dumps(ack)))
        limits = ack.get("limits") or {}
        self._max_frame_len = limits.get("max_frame_len", DEFAULT_MAX_FRAME_LEN)
        self.pools.update(ack.get("pools", []))
        self.triggers.update(ack.get("triggers", []))
        for r in ack.get("refused", []):
            self._refused(r)
        self._reader, self._writer = reader, writer
        self._dropped = None

    def _refused(self, r):
        reason = f"{r.get('code')}: {r.get('message')}"
        if "pool" in r:
            self.pools.discard(r["pool"])
            self._event("pool_left", {"pool": r["pool"], "reason": reason})
        elif "trigger" in r:
            self.triggers.discard(r["trigger"])
            self._handlers.pop(r["trigger"], None)
            self._event("trigger_refused", {"trigger": r["trigger"], "reason": reason})

    async def _run(self):
        """Reads and dispatches frames; reconnects when the connection drops."""
        while True:
            reason = "server closed the connection"
            try:
                await self._read_frames(self._reader, self._max_frame_len + FRAME_SLACK)
            except asyncio.CancelledError:
                return
            except (OSError, LatZeroError) as e:
                reason = str(e)
            except Exception as e:  # a frame this client cannot read, or a bug: drop and reconnect
                reason = f"the client failed reading from the server: {e!r}; connection dropped"
            closing, self._closing = self._closing, None
            if closing is not None:
                reason = f"{closing.get('code')}: {closing.get('message')}"
            self._dropped = reason
            self._drop_connection("DISCONNECTED", f"the connection to the server was lost before the reply arrived ({reason}); {_MAYBE_CARRIED_OUT}")
            # Leases end with their connection, and are not taken again: each holder is told.
            self._drops += 1
            leases, self._leases = self._leases, {}
            for (pool, block_id), mode in leases.items():
                self._event("lock_expired", {"pool": pool, "block_id": block_id, "mode": mode,
                                             "reason": "the connection to the server dropped: a lease ends with its connection, and is not taken again after a reconnect"})
            # Taken over by another connection: coming back would take it back, and the two
            # would flap.
            again = not self._closed and self._reconnect and (closing or {}).get("code") != "DUPLICATE_APP"
            self._event("disconnected", {"reason": reason, "reconnecting": again})
            if not again:
                self._finish()
                return
            if not await self._reconnect_loop():
                self._finish()
                return
            # Presence subscriptions were the old connection's.
            self._presence &= self.pools
            for pool in sorted(self._presence):
                self._send({"action": "presence_subscribe", "pool": pool})
            # So were block watches: resumed from the last version seen, each as a request, so
            # that one the server refuses now ends with an event instead of waiting for ever.
            for key in list(self._watches):
                asyncio.ensure_future(self._resume_watch(key))
            self._event("reconnected", {})

    async def _read_frames(self, reader, max_len):
        """Dispatches frames until the server ends the stream: every complete frame of a read
        in turn (a read for each frame's length and another for its payload cost two awaits a
        frame)."""
        buf = bytearray()
        want = 4
        while True:
            chunk = await reader.read(max(READ_CHUNK, want - len(buf)))
            if not chunk:
                return
            buf += chunk
            if len(buf) < want:
                continue
            view, pos, end = memoryview(buf), 0, len(buf)
            try:
                while end - pos >= 4:
                    n = int.from_bytes(view[pos:pos + 4], "big")
                    if n > max_len:
                        raise LatZeroError("FRAME_TOO_LARGE", f"the server announced a frame of {n} bytes, more than the {max_len} read")
                    if end - pos - 4 < n:
                        break
                    payload = bytes(view[pos + 4:pos + 4 + n])
                    pos += 4 + n
                    self._take(payload)
            finally:
                view.release()
            del buf[:pos]
            want = 4 if len(buf) < 4 else 4 + int.from_bytes(buf[:4], "big")

    async def _reconnect_loop(self):
        told = False
        lo, hi = self._backoff
        for attempt in itertools.count():
            await asyncio.sleep(min(hi, lo * 2 ** min(attempt, 20)) * random.uniform(0.5, 1.0))
            if self._closed:
                return False
            try:
                await self._open(partial=True)
                return True
            except LatZeroError as e:
                # A refusal by the server (a credential, the app id in use) is told once.
                if e.code != "CONNECT" and not told:
                    told = True
                    self._event("reconnect_refused", {"reason": str(e)})

    def _drop_connection(self, code, message):
        if self._writer is not None:
            self._write_out()
            self._writer.close()
        self._out.clear()
        self._reader = self._writer = None
        for fut, _, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(LatZeroError(code, message, sent=True))
        self._pending.clear()

    def _why(self):
        """Why the connection dropped, for a DISCONNECTED message, if known by now."""
        return f" ({self._dropped})" if self._dropped else ""

    def _finish(self):
        if not self._done.done():
            self._done.set_result(None)

    def _take(self, payload):
        """Handles one frame's payload. One that does not read (empty, not UTF-8, not one JSON
        object, or fields of the wrong type) is skipped with a warning on the `latzero` logger,
        as the Rust SDK skips it: the connection stays, and the frames after it still read."""
        try:
            self._dispatch(*_parse_payload(payload))
        except Exception as e:
            _log.warning("skipped a frame from the server that does not read: %r", e)

    def _dispatch(self, f, body=None):
        action = f.get("action")
        if action in ("trigger", "emit") and "in_reply_to" not in f:
            self._deliver(f, answer=action == "trigger")
            return
        if action == "presence":
            self._event("presence", {"pool": f.get("pool"), "app_id": f.get("app_id"), "joined": f.get("event") == "joined"})
            return
        if action == "pool_left":
            self.pools.discard(f.get("pool"))
            self._event("pool_left", {"pool": f.get("pool"), "reason": f.get("message")})
            return
        if action == "closing":
            self._closing = f
            return
        if action == "block_event":
            self._block_event(f)
            return
        waiting = self._pending.pop(str(f.get("in_reply_to")), None)
        if waiting is None:
            if action == "error":
                self._event("server_error", LatZeroError(f.get("code"), f.get("message")))
            return
        fut = waiting[0]
        if fut.done():
            return
        if action == "error":
            fut.set_exception(LatZeroError(f.get("code"), f.get("message"), handler=f.get("handler"),
                                           handler_may_still_run=f.get("handler_may_still_run")))
        elif action == "response" and f.get("status") == "error":
            fut.set_exception(_handler_error(f.get("error")))
        else:
            if body is not None:
                f["_body"] = body
            fut.set_result(f)

    def _block_event(self, f):
        key = (f.get("pool"), f.get("block_id"))
        event = f.get("event")
        if event == "lock_expired":
            self._leases.pop(key, None)
            detail = {"pool": key[0], "block_id": key[1], "mode": f.get("mode")}
            if "reason" in f:
                detail["reason"] = f["reason"]
            self._event("lock_expired", detail)
            return
        w = self._watches.get(key)
        if w is None:
            return
        version = f.get("version", 0)
        if event == "changed":
            w["seen"] = max(w["seen"] or 0, version)
        elif event == "synced":
            # Where the live events start, even below a version seen of an earlier block of
            # the name.
            w["seen"] = version
            w["created_at"] = f.get("created_at", w["created_at"])
        elif event in ("deleted", "unwatched"):
            del self._watches[key]
        detail = {k: v for k, v in f.items() if k != "action"}
        try:
            out = w["fn"](detail)
            if inspect.isawaitable(out):
                asyncio.ensure_future(out)
        except Exception as e:  # a watcher's bug must not stop the client
            _log.warning("the watch of %s/%s raised %r", key[0], key[1], e)

    async def _resume_watch(self, key):
        w = self._watches.get(key)
        if w is None:
            return
        frame = {"action": "block_watch", "pool": key[0], "block_id": key[1], "since": w["seen"] or 0}
        if w["created_at"] is not None:
            frame["created_at"] = w["created_at"]
        try:
            await self._request(frame, self._timeout)
        except LatZeroError as e:
            if e.code in ("DISCONNECTED", "NO_REPLY") or self._watches.get(key) is not w:
                return  # the next reconnect asks again; or the watch was replaced meanwhile
            if e.code == "BLOCK_NOT_FOUND":
                ended = {"event": "deleted"}
            else:
                ended = {"event": "unwatched", "reason": f"the watch could not be resumed after a reconnect: {e}"}
            self._block_event({"pool": key[0], "block_id": key[1], "version": w["seen"] or 0, **ended})

    def _deliver(self, f, answer):
        """Runs the handler for a delivered trigger or emit: a plain function right here, in
        the read loop, to its end (a task for each delivery cost more than a small handler); a
        coroutine as a task of its own, started at once where Python can (3.12's eager tasks:
        one that does not wait ends here, without a turn of the loop). Any other awaitable it
        returns is awaited in a task."""
        name = f.get("process")
        handler = self._handlers.get(name)
        if handler is None:
            self._answer(f, answer, False, {"message": f"this app has no handler for '{name}'"})
            return
        origin = (f.get("origin") or {}).get("app_id")
        # A CancelledError the handler raises is its own failure here, in the read loop: let
        # through, it would end the loop.
        try:
            value = handler(Request(f.get("data"), f.get("pool"), name, origin))
        except (Exception, asyncio.CancelledError) as e:
            self._answer(f, answer, False, _failure(e))
            return
        if inspect.iscoroutine(value) and _EAGER_TASKS:
            # Not stepped by hand in the read loop: there its first step was the read loop
            # task's, so `asyncio.timeout` in a handler cancelled the read loop (the client
            # stopped reading, silently) and its context variables leaked into the loop.
            task = asyncio.Task(value, loop=self._loop, eager_start=True)
            if task.done():
                self._answer_task(f, answer, task)
            else:
                self._tasks.add(task)
                task.add_done_callback(lambda t: self._answer_task(f, answer, t))
            return
        if inspect.isawaitable(value):
            task = asyncio.ensure_future(self._deliver_later(f, answer, value))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._answer(f, answer, True, value)

    def _answer_task(self, f, answer, task):
        """Answers for a handler's task once it has ended (see _deliver)."""
        self._tasks.discard(task)
        if task.cancelled():
            self._answer(f, answer, False, _failure(asyncio.CancelledError()))
        elif task.exception() is not None:
            self._answer(f, answer, False, _failure(task.exception()))
        else:
            self._answer(f, answer, True, task.result())

    async def _deliver_later(self, f, answer, waiting):
        try:
            value = await waiting
        except Exception as e:
            self._answer(f, answer, False, _failure(e))
            return
        except asyncio.CancelledError as e:
            # The handler's own, or this task's (the loop shutting down): the caller is told
            # either way, and the cancellation goes on.
            self._answer(f, answer, False, _failure(e))
            raise
        self._answer(f, answer, True, value)

    def _answer(self, f, answer, ok, value):
        """Sends a handler's result for a delivered trigger (nothing for an emit). A result that
        cannot be sent reaches the caller as the handler's error, not as its timeout."""
        if not answer or self._writer is None:
            return
        in_reply_to = _json(f.get("id"))
        try:
            text = _json_text(value)
            self._send(f'{{"action":"response","in_reply_to":{in_reply_to},'
                       f'"status":"{"ok" if ok else "error"}","{"response" if ok else "error"}":{text}}}')
            return
        except LatZeroError as e:
            if e.code != "FRAME_TOO_LARGE":
                return  # disconnected meanwhile: the server has failed the call (HANDLER_GONE)
            why = f"returned a result too large to send: {e}"
        except (TypeError, ValueError) as e:
            why = f"returned a value that is not JSON: {e}"
        except Exception as e:  # found deeper in the value (too deep a nesting, say)
            why = f"returned a value that cannot be sent: {e!r}"
        message = _encode_str(f"handler '{f.get('process')}' {why}")
        try:
            self._send(f'{{"action":"response","in_reply_to":{in_reply_to},"status":"error","error":{{"message":{message}}}}}')
        except LatZeroError:
            pass

    def _send(self, frame, body=None):
        if self._writer is None:
            then = "the client does not reconnect" if self._done.done() else "the client is reconnecting"
            raise LatZeroError("DISCONNECTED", f"not connected to the server{self._why()}; the request was not sent; {then}", sent=False)
        data = _frame(frame) if body is None else _binary_frame(frame, body)
        if len(data) - 4 > self._max_frame_len:
            raise LatZeroError("FRAME_TOO_LARGE", f"a frame of {len(data) - 4} bytes exceeds the server's max_frame_len of {self._max_frame_len} bytes; not sent")
        # Frames sent in one turn of the event loop go out in one write at its end (a write
        # each was a send(2) each: a fifth of a pipelining client's time), or as soon as they
        # fill a batch: a loop that sends without waiting for answers may not end the turn.
        if not self._out:
            self._loop.call_soon(self._write_out)
            self._out_bytes = 0
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= WRITE_BATCH:
            self._write_out()

    def _write_out(self):
        out, self._out = self._out, []
        if out and self._writer is not None and not self._writer.transport.is_closing():
            self._writer.write(out[0] if len(out) == 1 else b"".join(out))

    async def _request(self, frame, timeout, body=None):
        """Sends `frame` with a fresh id and waits for its answer. `frame` is a message (a dict),
        or a function from the id (an integer) to the message's JSON text."""
        n = next(self._ids)
        rid = str(n)
        if callable(frame):
            frame = frame(n)
        else:
            frame["id"] = rid
        fut = self._loop.create_future()
        self._pending[rid] = (fut, self._loop.time() + timeout, timeout)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        try:
            self._send(frame, body)
            # Backpressure: waits while the socket's buffer is over its high-water mark.
            await self._writer.drain()
            return await fut
        except (OSError, AttributeError):
            raise LatZeroError("DISCONNECTED", f"the connection to the server was lost{self._why()}; {_MAYBE_CARRIED_OUT}", sent=True) from None
        finally:
            self._pending.pop(rid, None)

    def _sweep(self):
        """Ends the requests past their deadline with NO_REPLY (at most SWEEP_INTERVAL late);
        runs while any are waiting."""
        self._sweeper = None
        now = self._loop.time()
        for rid, (fut, deadline, timeout) in list(self._pending.items()):
            if deadline <= now:
                del self._pending[rid]
                if not fut.done():
                    fut.set_exception(LatZeroError("NO_REPLY", f"no reply from the server within {timeout} s"))
        if self._pending:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    # The API.

    async def call(self, pool, trigger, data=None, *, timeout=None, to=None):
        """Calls a trigger and returns its response. `timeout` (seconds) is passed to the server
        as the call's ttl; `to` names the app to run it on."""
        timeout = self._timeout if timeout is None else timeout
        # Written as text (see _request): a dict serialised per call cost a fifth of the call.
        # Without `to`, in the layout the server reads first (as the Rust SDK writes it).
        head = f'"process":{_json(trigger)},"pool":{_json(pool)},"data":{_json(data)},"ttl":{_ms(timeout, "timeout")}'
        if to is not None:
            head += f',"destination":{_json(to)}'

        def frame(rid):
            return f'{{"action":"trigger","id":{rid},{head}}}'
        # The server's own deadline answers first (TIMEOUT); this one covers a server gone quiet.
        f = await self._request(frame, timeout + 1.0)
        return f.get("response")

    async def broadcast(self, pool, trigger, data=None, *, timeout=None):
        """Calls a trigger on every app of the pool that serves it (PROTOCOL.md §5.5), and
        returns once each has answered or failed: a list, one dict per handler, with `app_id`
        and either `response` or `error` (a LatZeroError: HANDLER_ERROR for the handler's own
        error, else the server's code for it, TIMEOUT say). NO_HANDLER is raised when none
        serves it."""
        timeout = self._timeout if timeout is None else timeout
        frame = {"action": "trigger", "process": trigger, "pool": pool, "data": data,
                 "ttl": _ms(timeout, "timeout"), "broadcast": True}
        f = await self._request(frame, timeout + 1.0)
        out = []
        for r in f.get("responses") or []:
            if r.get("status") == "ok":
                out.append({"app_id": r.get("app_id"), "response": r.get("response")})
            elif "code" in r:
                out.append({"app_id": r.get("app_id"), "error": LatZeroError(r["code"], r.get("message"))})
            else:
                out.append({"app_id": r.get("app_id"), "error": _handler_error(r.get("error"))})
        return out

    async def emit(self, pool, trigger, data=None, *, confirm=True):
        """Emits to every handler of a trigger in a pool; returns how many it reached (the
        server's receipt). With confirm=False it is fire-and-forget, as the Rust SDK's `emit`:
        it returns None once the event is queued to the server, and a refusal (NOT_IN_POOL,
        OVERLOADED) comes later as a `server_error` event. An event still queued when the
        connection drops is lost with it (the `disconnected` event tells of the drop): wait
        for the receipt where that matters. close() writes what is queued before it returns."""
        if confirm:
            f = await self._request({"action": "emit", "process": trigger, "pool": pool, "data": data}, self._timeout)
            return f.get("delivered")
        # In the layout the server reads first (as the Rust SDK writes it).
        self._send(f'{{"action":"emit","process":{_json(trigger)},"pool":{_json(pool)},"data":{_json(data)}}}')
        try:
            # Backpressure: waits while the socket's buffer is over its high-water mark.
            await self._writer.drain()
        except (OSError, AttributeError):
            raise LatZeroError("DISCONNECTED", f"the connection to the server was lost{self._why()}; the event may or may not have been sent", sent=True) from None
        return None

    async def handle(self, trigger, fn):
        """Registers a handler: fn(request) returns (or is a coroutine that returns) the response;
        an exception answers the caller with an error. A plain function runs at once, in the
        client's read loop, holding up everything else until it returns: move blocking work off
        it (`await asyncio.to_thread(...)` in a coroutine, which runs in a task of its own).
        While disconnected it is recorded, and the next handshake carries it."""
        _callable(fn, "a handler")
        had = trigger in self._handlers
        self._handlers[trigger] = fn
        if had:
            return
        try:
            await self._hold(self.triggers, trigger, {"action": "register", "triggers": [trigger]})
        except LatZeroError:
            self._handlers.pop(trigger, None)
            raise

    async def unhandle(self, trigger):
        """Stops serving a trigger: the handler is forgotten, and the server unregisters it. A
        call the server routed here meanwhile is answered with an error. While disconnected it
        is forgotten here, and the next handshake leaves it out."""
        self._handlers.pop(trigger, None)
        self.triggers.discard(trigger)
        await self._release({"action": "unregister", "triggers": [trigger]})

    async def join(self, pool):
        """Joins a pool (created on first join). While disconnected it is recorded."""
        await self._hold(self.pools, pool, {"action": "join", "pools": [pool]})

    async def subscribe_presence(self, pool):
        """Asks for `presence` events of a pool the client is in; asked again after reconnects."""
        await self._hold(self._presence, pool, {"action": "presence_subscribe", "pool": pool})

    async def unsubscribe_presence(self, pool):
        """Stops the `presence` events of a pool."""
        self._presence.discard(pool)
        await self._release({"action": "presence_unsubscribe", "pool": pool})

    async def _release(self, frame):
        """Asks the server to let go of something already forgotten here; while disconnected
        there is nothing to ask (the next handshake leaves it out)."""
        try:
            await self._request(frame, self._timeout)
        except LatZeroError as e:
            if e.code != "DISCONNECTED":
                raise

    async def _hold(self, held, item, frame):
        """Adds `item` to `held` (what the next handshake or reconnect asks for again) and asks
        the server now. Refused, it is taken out again, unless it was there before; while
        disconnected it stays, recorded, and this returns."""
        had = item in held
        held.add(item)
        try:
            await self._request(frame, self._timeout)
        except LatZeroError as e:
            if e.code == "DISCONNECTED":
                return
            if not had:
                held.discard(item)
            raise

    # Memory blocks, through the server (PROTOCOL.md §7): this client does not map them.

    async def block_create(self, pool, block_id, size, *, type="binary", persistent=False, permissions=None):
        """Creates a memory block in a pool; returns the server's description of it."""
        frame = {"action": "block_create", "pool": pool, "block_id": block_id, "size": size,
                 "type": type, "persistent": persistent}
        if permissions is not None:
            frame["permissions"] = permissions
        return (await self._request(frame, self._timeout)).get("block")

    async def block_write(self, pool, block_id, data=None, *, offset=0, document=None):
        """Writes bytes at `offset` of a binary block (`data`), or replaces a json block's
        `document`; returns the block's new version."""
        frame = {"action": "block_write", "pool": pool, "block_id": block_id}
        if document is not None:
            frame["document"] = document
            f = await self._request(frame, self._timeout)
        else:
            frame["offset"] = offset
            f = await self._request(frame, self._timeout, body=data or b"")
        return f.get("version")

    async def block_read(self, pool, block_id, *, offset=0, length=None):
        """Reads a block: (bytes, version) for a binary block (from `offset`, `length` bytes or
        to the end), (document, version) for a json block."""
        frame = {"action": "block_read", "pool": pool, "block_id": block_id}
        if offset:
            frame["offset"] = offset
        if length is not None:
            frame["length"] = length
        f = await self._request(frame, self._timeout)
        if "document" in f:
            return f["document"], f.get("version")
        return f.get("_body", b""), f.get("version")

    async def block_delete(self, pool, block_id):
        """Deletes a memory block."""
        await self._request({"action": "block_delete", "pool": pool, "block_id": block_id}, self._timeout)

    async def block_attach(self, pool, block_id, *, map=True, write=False):
        """Attaches a block and returns a Block: mapped when this process can open the server's
        file for it (the same host and user) on x86-64, whose memory ordering the lock-free
        reads and writes rely on; through the server otherwise (`map=False` asks for that).
        With `write=True` (write permission needed) `Block.write` and `Block.write_json` write
        a binary or json block in place too, taking the block's write side with libatomic's
        compare-and-swap (the libatomic1 package; without it writes go through the server)."""
        f = await self._request({"action": "block_attach", "pool": pool, "block_id": block_id,
                                 "mode": "write" if write else "read"}, self._timeout)
        return Block(self, f.get("block") or {}, f.get("path") if map else None, f.get("header_len", 4096),
                     writable=f.get("mode") == "write")

    async def block_append(self, pool, block_id, record):
        """Appends a record (bytes) to a stream block; returns (index, version)."""
        frame = {"action": "block_write", "pool": pool, "block_id": block_id}
        f = await self._request(frame, self._timeout, body=record)
        return f.get("index"), f.get("version")

    async def block_consume(self, pool, block_id, consumer, *, max=1000):
        """Reads up to `max` records of a stream block from the named consumer's cursor (1-48
        bytes; registered on first use, at the oldest record held), which moves past them.
        Returns {"records": [bytes], "skipped", "next_index", "version"}: `skipped` counts
        records an overwriting stream dropped before this consumer read them. A read returns at
        most 100,000 records (the protocol's bound; a larger `max` asks for that many) and as
        many as fit one frame, so it may return fewer than `max` with more waiting: read again.
        `max` is at least 1."""
        if type(max) is int:
            max = min(max, MAX_STREAM_READ)
        frame = {"action": "block_read", "pool": pool, "block_id": block_id, "consumer": consumer, "max": max}
        f = await self._request(frame, self._timeout)
        body, records, at = f.get("_body", b""), [], 0
        for n in f.get("lengths", []):
            if at + n > len(body):
                raise LatZeroError("PROTOCOL", "block_records lengths exceed the body")
            records.append(body[at:at + n])
            at += n
        return {"records": records, "skipped": f.get("skipped", 0), "next_index": f.get("next_index"),
                "version": f.get("version")}

    async def block_lock(self, pool, block_id, *, mode="exclusive", lease=None, wait=0.0):
        """Takes a lease on a block, `exclusive` (needs write permission) or `shared` (read),
        waiting up to `wait` seconds for it (0: fail at once with LOCKED; else LOCK_TIMEOUT).
        `lease` (seconds; the server's default, 30 s, without it) is renewed by locking again.
        Returns {"mode", "lease_ms", "renewed"}: `renewed` is False when the lease is new,
        so a holder renewing learns that its lease had run out. The lease ends at
        `block_unlock`, when it expires (a `lock_expired` event), or with the connection; a grant
        that comes just before the connection drops ended with it, and raises DISCONNECTED."""
        frame = {"action": "block_lock", "pool": pool, "block_id": block_id, "mode": mode,
                 "wait_ms": _ms(wait, "wait", zero=True)}
        if lease is not None:
            frame["lease_ms"] = _ms(lease, "lease")
        drops = self._drops
        f = await self._request(frame, self._timeout + wait)
        if self._drops != drops:
            # Granted, but the connection dropped before this call took the grant up (frames
            # behind the grant in the same read, say), and the lease ended with it.
            raise LatZeroError("DISCONNECTED", "the connection to the server dropped just after the lock was granted; the lease ended with it", sent=True)
        self._leases[(pool, block_id)] = f.get("mode", mode)
        return {"mode": f.get("mode"), "lease_ms": f.get("lease_ms"), "renewed": f.get("renewed")}

    async def block_unlock(self, pool, block_id):
        """Releases this client's lease on a block (NOT_LOCKED if it holds none)."""
        try:
            await self._request({"action": "block_unlock", "pool": pool, "block_id": block_id}, self._timeout)
        except LatZeroError as e:
            if e.code == "NOT_LOCKED":
                self._leases.pop((pool, block_id), None)
            raise
        self._leases.pop((pool, block_id), None)

    async def block_watch(self, pool, block_id, fn, *, since=None):
        """Watches a block: fn(event) (or a coroutine function) gets each event as a dict with
        `event`, `pool`, `block_id` and `version`: `changed` (with `offset` and `length`; for
        streams the record's index and size), `synced` (the initial state is sent; with
        `created_at`), `deleted` and `unwatched` (with `reason`), after which none follow. With
        `since` (the last version seen) a newer block starts with a `changed` for the whole
        of it. After a reconnect the watch resumes from the last version seen; a block gone by
        then (a non-persistent block does not outlive its server) ends it with `deleted`.
        Watching a block again replaces fn. While disconnected it is recorded."""
        _callable(fn, "a watch")
        key = (pool, block_id)
        w = {"fn": fn, "seen": since, "created_at": None}
        self._watches[key] = w
        frame = {"action": "block_watch", "pool": pool, "block_id": block_id}
        if since is not None:
            frame["since"] = since
        try:
            await self._request(frame, self._timeout)
        except LatZeroError as e:
            if e.code == "DISCONNECTED":
                return
            if self._watches.get(key) is w:
                del self._watches[key]
            raise

    async def block_unwatch(self, pool, block_id):
        """Stops watching a block."""
        if self._watches.pop((pool, block_id), None) is None:
            return
        try:
            await self._request({"action": "block_unwatch", "pool": pool, "block_id": block_id}, self._timeout)
        except LatZeroError as e:
            if e.code != "DISCONNECTED":  # the watch went with the connection
                raise

    async def leave(self, pool):
        """Leaves a pool. While disconnected it is forgotten here, and the next handshake leaves
        it out."""
        self.pools.discard(pool)
        self._presence.discard(pool)
        await self._release({"action": "leave", "pools": [pool]})

    async def encrypted_pool(self, pool, keys):
        """Joins an encrypted pool by proving its SigilKey (the key never leaves this process)
        and returns the EncryptedPool through which this app's payloads and blocks in the pool
        are sealed and opened. `keys` is a PoolKeys, or the key texts `latzero keys generate`
        printed. Needs the `cryptography` package (NOT_AVAILABLE without it). A wrong SigilKey
        is PERMISSION_DENIED. The pool is not in `pools`: a handshake cannot join it, so the
        handle joins it again after a reconnect."""
        if not isinstance(keys, PoolKeys):
            keys = PoolKeys(pool, keys)
        if keys.pool != pool:
            raise LatZeroError("INVALID_OPTIONS", f"these keys are for pool '{keys.pool}', not '{pool}'")
        handle = EncryptedPool(self, keys)
        try:
            await handle._join()
        except BaseException:
            handle.close()
            raise
        return handle

    async def close(self):
        """Closes the connection; calls in flight raise DISCONNECTED. What was queued before
        (a fire-and-forget emit returns once queued) is written first: close returns once the
        connection has taken all of it, or after `close_grace` seconds (5 by default) of a
        server that does not read it, when the rest is dropped with a warning on the `latzero`
        logger. So a program may end as soon as close returns."""
        self._closed = True
        if self._reader_task is not None:
            self._reader_task.cancel()
        writer = self._writer
        self._dropped = "the client was closed"
        self._drop_connection("DISCONNECTED", "the client was closed")
        self._event("disconnected", {"reason": "client closed", "reconnecting": False})
        if writer is not None:
            await self._written(writer)
        self._finish()

    async def _written(self, writer):
        """Waits for a closed `writer` to write what it holds, for up to the close grace; then
        drops the rest, saying so."""
        try:
            await asyncio.wait_for(writer.wait_closed(), self._close_grace)
        except asyncio.TimeoutError:
            left = writer.transport.get_write_buffer_size()
            writer.transport.abort()
            if left:
                _log.warning("close: %d bytes queued to the server were not written: it did not read them "
                             "within the close grace (%s s)", left, self._close_grace)
        except OSError:
            # The connection failed meanwhile; the `disconnected` event has told of the close.
            pass

    async def wait_closed(self):
        """Waits until the client is closed, or disconnected for good."""
        await self._done


# The block file's header (PROTOCOL.md §7.1), as 8-byte words.
_W_VERSION, _W_SEQ, _W_WRITER, _W_USED, _W_DELETED = 4, 5, 6, 7, 332
# A mapped read that keeps meeting writes for this long (seconds; it holds the event loop
# meanwhile) is read through the server instead, which reads under the block's write side.
_MAPPED_READ_PATIENCE = 0.05


class Block:
    """A memory block attached by `Client.block_attach`.

    `mapped` tells whether it is mapped here. A mapped block is read in place, consistent with
    the block's seqlock (a read that meets a write is retried; one that keeps meeting them, or
    a writer that died mid-write, is read through the server instead), and a block the server
    has deleted raises BLOCK_NOT_FOUND. Otherwise every read goes through the server.
    `writable` tells whether `write` writes in place (`why_not_writable` says why not)."""

    def __init__(self, client, info, path, header_len, writable=False):
        self._client = client
        self.pool = info.get("pool")
        self.block_id = info.get("block_id")
        self.type = info.get("type", "binary")
        self.size = info.get("size", 0)
        # The server's file for the block (mapped when `mapped`).
        self.path = path
        self._mm = self._words = self._writer = None
        self._header_len = header_len
        self.why_not_mapped = None
        # Why `write` goes through the server (None: it writes in place).
        self.why_not_writable = None if writable else "attached for reading"
        if path is None:
            self.why_not_mapped = "not asked to map it"
        elif platform.machine().lower() not in ("x86_64", "amd64"):
            self.why_not_mapped = f"mapped reads need x86-64's memory ordering, not {platform.machine()}'s"
        elif self.type == "stream":
            self.why_not_mapped = "a stream's consumers move their cursors: consume through the server"
        else:
            try:
                fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
                try:
                    self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
                finally:
                    os.close(fd)
                if len(self._mm) < header_len + self.size or self._mm[:8] != b"LZBLOCK\0":
                    raise OSError("not a block file of this size")
                self._words = memoryview(self._mm)[:header_len].cast("Q")
            except (OSError, ValueError) as e:
                self.close()
                self.why_not_mapped = f"cannot map {path}: {e}"
        if self.why_not_writable is None:
            if not self.mapped:
                self.why_not_writable = f"not mapped: {self.why_not_mapped}"
            elif self.type == "stream":
                self.why_not_writable = "a stream block is appended to through the server"
            elif _cas() is None:
                self.why_not_writable = "libatomic (the libatomic1 package) is not installed"
            else:
                # The write side's word, for the compare-and-swap that takes it.
                self._writer = ctypes.c_uint64.from_buffer(self._mm, 8 * _W_WRITER)

    @property
    def mapped(self):
        return self._words is not None

    @property
    def writable(self):
        """Whether `write` writes in place (else through the server: see `why_not_writable`)."""
        return self._writer is not None

    def close(self):
        """Unmaps the block (views from `view()` must be released first)."""
        self._writer = None
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def view(self):
        """The mapped data, zero-copy: a read-only memoryview of the live bytes, which writers
        may change while it is read. For a consistent copy, `read`."""
        if not self.mapped:
            raise LatZeroError("NOT_MAPPED", f"block {self.pool}/{self.block_id} is not mapped here: {self.why_not_mapped}")
        return memoryview(self._mm)[self._header_len:self._header_len + self.size]

    def _consistent(self, copy):
        """copy() run with no write overlapping it: (its result, the version), or None when
        writes kept overlapping it or the writer died mid-write."""
        w = self._words
        start = time.monotonic()
        tries = 0
        while True:
            if w[_W_DELETED] != 0:
                raise LatZeroError("BLOCK_NOT_FOUND", f"block {self.pool}/{self.block_id} was deleted")
            s1 = w[_W_SEQ]
            if s1 & 1 == 0:
                r = copy()
                v = w[_W_VERSION]
                if w[_W_SEQ] == s1:
                    return r, v
            tries += 1
            if tries % 64 == 0 and _give_up(w[_W_WRITER], start):
                return None

    async def read(self, offset=0, length=None):
        """A binary block's bytes from `offset` (`length` of them, or to the end), with the
        version they belong to: (bytes, version). A json block's: see `read_json`."""
        if self.mapped and self.type == "binary":
            length = self.size - offset if length is None else length
            if offset < 0 or length < 0 or offset + length > self.size:
                raise LatZeroError("OUT_OF_RANGE", f"{offset}+{length} is outside block {self.pool}/{self.block_id} of {self.size} bytes")
            at = self._header_len + offset
            got = self._consistent(lambda: self._mm[at:at + length])
            if got is not None:
                return got
        return await self._client.block_read(self.pool, self.block_id, offset=offset, length=length)

    async def write(self, offset, data):
        """Writes `data` (bytes) at `offset` of a binary block and returns the new version: in
        place when `writable` (then the server is told, without waiting, so that watchers hear
        of it), else through the server. A write side held too long, or by a writer that died,
        is left to the server, which repairs it."""
        if not self.writable or self.type != "binary":
            return await self._client.block_write(self.pool, self.block_id, data, offset=offset)
        n = len(data)
        if offset < 0 or offset + n > self.size:
            raise LatZeroError("OUT_OF_RANGE", f"{offset}+{n} is outside block {self.pool}/{self.block_id} of {self.size} bytes")
        version = self._write_in_place(offset, data)
        if version is None:
            return await self._client.block_write(self.pool, self.block_id, data, offset=offset)
        return await self._notify(version, offset, n)

    async def write_json(self, document):
        """Replaces a json block's document and returns the new version: in place when
        `writable` (the document's text and its length, in one write of the seqlock; the server
        told as for `write`), else through the server."""
        if not self.writable or self.type != "json":
            return await self._client.block_write(self.pool, self.block_id, document=document)
        try:
            text = _encode(document).encode()
        except (TypeError, ValueError) as e:
            raise LatZeroError("INVALID_JSON", f"the document is not JSON: {e}") from None
        if len(text) > self.size:
            raise LatZeroError("OUT_OF_RANGE", f"the document is {len(text)} bytes; block {self.pool}/{self.block_id} holds {self.size}")
        version = self._write_in_place(0, text, used=len(text))
        if version is None:
            return await self._client.block_write(self.pool, self.block_id, document=document)
        return await self._notify(version, 0, len(text))

    async def _notify(self, version, offset, n):
        """Tells the server of a write made in place, so that watchers hear of it."""
        # Told without waiting for an answer, as the Rust SDK tells it (a refusal would come as
        # a `server_error` event). Not connected just now: the write stands, and watchers
        # resuming after the reconnect hear of it from the version.
        try:
            self._client._send({"action": "block_notify", "pool": self.pool, "block_id": self.block_id,
                                "version": version, "offset": offset, "length": n})
            # Backpressure, as for a fire-and-forget emit: a loop of writes that never waits
            # otherwise would pile its notices up in memory.
            await self._client._writer.drain()
        except (LatZeroError, OSError, AttributeError):
            pass
        return version

    def _write_in_place(self, offset, data, used=None):
        """The seqlock's write side (PROTOCOL.md §7.1): take it (compare-and-swap `writer` from
        0 to this pid), make `seq` odd, copy (and set a json block's `used`), bump `version`,
        make `seq` even, give it back.
        x86-64 keeps stores in program order, which the readers' retry relies on. The version,
        or None when the side stayed taken (busy, or its holder died)."""
        w, cas, me = self._words, _cas(), os.getpid()
        at = ctypes.addressof(self._writer)
        expected = ctypes.c_uint64(0)
        start, tries = time.monotonic(), 0
        while not cas(at, ctypes.byref(expected), me, _SEQ_CST, _SEQ_CST):
            holder, expected.value = expected.value, 0
            tries += 1
            if tries % 64 == 0 and _give_up(holder if holder != me else 0, start):
                return None
        try:
            if w[_W_DELETED] != 0:
                raise LatZeroError("BLOCK_NOT_FOUND", f"block {self.pool}/{self.block_id} was deleted")
            seq = w[_W_SEQ]
            w[_W_SEQ] = seq + 1
            at = self._header_len + offset
            self._mm[at:at + len(data)] = data
            if used is not None:
                w[_W_USED] = used
            version = w[_W_VERSION] + 1
            w[_W_VERSION] = version
            w[_W_SEQ] = seq + 2
            return version
        finally:
            w[_W_WRITER] = 0

    async def read_json(self):
        """A json block's document and its version: (document, version)."""
        if self.mapped and self.type == "json":
            h, size = self._header_len, self.size
            got = self._consistent(lambda: self._mm[h:h + min(self._words[_W_USED], size)])
            if got is not None:
                raw, version = got
                try:
                    return (json.loads(raw) if raw else None), version
                except ValueError as e:
                    # As the server refuses to send it (PROTOCOL.md §7.4).
                    raise LatZeroError("INTERNAL", f"the stored document is not a valid JSON document: {e}") from None
        return await self._client.block_read(self.pool, self.block_id)


# Encrypted pools (PROTOCOL.md §4.6). They need the `cryptography` package (Debian:
# python3-cryptography; else `pip install cryptography`), imported on first use: the rest of
# this client is the standard library only.

_SEAL_MAGIC = b"LZS1"
_SEAL_HEADER_LEN = 4 + 4 + 8 + 12
_SEAL_TAG_LEN = 16
_SEAL_SIGNATURE_LEN = 64
_SEAL_DOMAIN = b"latzero-seal-v1\0"
_JOIN_DOMAIN = b"latzero-join-v1\0"
# How long a sealed message stays acceptable (and its nonce remembered), nanoseconds.
_REPLAY_WINDOW_NS = 300 * 10**9
# How many times an append is sealed again after the server found it sealed before the
# stream's newest record (another writer's append landed first).
_APPEND_TRIES = 8
_KEY_ROLES = {"sigil": "SigilKey", "cipher": "CipherShard", "seal": "OblivionSeal"}
_U32_MAX = 2**32 - 1


@functools.lru_cache(maxsize=None)
def _crypto():
    """The `cryptography` package's primitives; NOT_AVAILABLE without the package."""
    try:
        from cryptography.exceptions import InvalidSignature, InvalidTag
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    except ImportError:
        raise LatZeroError("NOT_AVAILABLE", "encrypted pools need the `cryptography` package (Debian: apt install "
                                            "python3-cryptography; else pip install cryptography)") from None
    return {"InvalidSignature": InvalidSignature, "InvalidTag": InvalidTag, "SHA256": hashes.SHA256,
            "Ed25519PrivateKey": Ed25519PrivateKey, "Ed25519PublicKey": Ed25519PublicKey, "AESGCM": AESGCM,
            "HKDF": HKDF, "Raw": (Encoding.Raw, PublicFormat.Raw)}


def _crypto_error(message):
    return LatZeroError("CRYPTO", message)


def _redact_key(text):
    """A key text as an error may show it: only the parts that belong before the key (`lzk1`,
    a role, a generation's digits), as the Rust SDK shows it; anything else may hold a key."""
    shown = []
    for i, part in enumerate(text.split(".")[:3]):
        fits = (part == "lzk1", part in _KEY_ROLES, part.isascii() and part.isdigit() and len(part) <= 10)[i]
        if not fits:
            break
        shown.append(part)
    return ".".join(shown + ["<redacted>"])


class PoolKeys:
    """An encrypted pool's keys: the texts `latzero keys generate|rotate` printed
    (`lzk1.<sigil|cipher|seal>.<generation>.<key>`), any subset of them. Joining takes the
    SigilKey, reading the CipherShard, writing the CipherShard and the OblivionSeal; keys of
    older generations open records sealed under them. A bad text is INVALID_OPTIONS, naming its
    shape but never its key; repr() shows no key."""

    def __init__(self, pool, texts):
        _crypto()
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        self.pool = pool
        self._gens = {}
        self._derived = {}
        for t in texts:
            if not isinstance(t, str):
                raise LatZeroError("INVALID_OPTIONS", f"a pool key is text, got {type(t).__name__}")
            t = t.strip()
            bad = LatZeroError("INVALID_OPTIONS", "not a LatZero pool key (expected "
                                                  f"lzk1.sigil|cipher|seal.GENERATION.KEY): {_redact_key(t)}")
            parts = t.split(".")
            if len(parts) != 4 or parts[0] != "lzk1" or parts[1] not in _KEY_ROLES:
                raise bad
            generation, key = parts[2], parts[3]
            if not (generation.isascii() and generation.isdigit() and int(generation) <= _U32_MAX):
                raise bad
            try:
                raw = base64.b64decode(key.translate(str.maketrans("-_", "+/")) + "=" * (-len(key) % 4), validate=True)
            except ValueError:
                raise bad from None
            # Unpadded, and canonical: the Rust SDK refuses any other spelling of the 32 bytes.
            if len(raw) != 32 or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != key:
                raise bad
            self._gens.setdefault(int(generation), {})[parts[1]] = raw
        if not self._gens:
            raise LatZeroError("INVALID_OPTIONS", f"no keys for pool '{pool}'")

    @classmethod
    def from_text(cls, pool, text):
        """The keys in a keys file's text (`latzero keys generate POOL --out FILE`): the last word
        of each line that is neither blank nor a `#` comment, as the Rust SDK reads it."""
        lines = (line.strip() for line in text.splitlines())
        return cls(pool, [line.split()[-1] for line in lines if line and not line.startswith("#")])

    @classmethod
    def from_file(cls, pool, path):
        """The keys in a keys file (from_text)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_text(pool, f.read())

    def __repr__(self):
        held = {g: sorted(_KEY_ROLES[r] for r in keys) for g, keys in sorted(self._gens.items())}
        return f"PoolKeys(pool={self.pool!r}, generations={held})"

    @property
    def latest(self):
        """The newest key generation held."""
        return max(self._gens)

    def has(self, role, generation):
        """Whether the key of `role` (sigil, cipher or seal) of `generation` is held."""
        return role in self._gens.get(generation, {})

    def _need(self, role, generation, what):
        key = self._gens.get(generation, {}).get(role)
        if key is None:
            raise _crypto_error(f"pool '{self.pool}' has no {_KEY_ROLES[role]} for key generation {generation}; {what} needs it")
        return key

    def _derive(self, role, generation, label, what, make):
        """A key derived from one of ours (HKDF-SHA256, salt `latzero/v1/<pool>`, info
        `<label>/<generation>`), made once."""
        got = self._derived.get((label, generation))
        if got is None:
            c = _crypto()
            hkdf = c["HKDF"](algorithm=c["SHA256"](), length=32, salt=f"latzero/v1/{self.pool}".encode(),
                             info=f"{label}/{generation}".encode())
            got = self._derived[(label, generation)] = make(c, hkdf.derive(self._need(role, generation, what)))
        return got

    def _cipher(self, generation, what):
        return self._derive("cipher", generation, "aes-256-gcm", what, lambda c, k: c["AESGCM"](k))

    def _writer(self, generation):
        return self._derive("seal", generation, "write-ed25519", "writing (signing)",
                            lambda c, k: c["Ed25519PrivateKey"].from_private_bytes(k))

    def _joiner(self, generation):
        return self._derive("sigil", generation, "join-ed25519", "joining",
                            lambda c, k: c["Ed25519PrivateKey"].from_private_bytes(k))

    def write_verifier(self, generation):
        """The 32-byte Ed25519 public key the server checks writes of `generation` with (needs
        the OblivionSeal)."""
        return self._writer(generation).public_key().public_bytes(*_crypto()["Raw"])


_last_seq = 0


def _next_seq():
    """The writer's clock in nanoseconds, strictly increasing in this process (PROTOCOL.md §4.6)."""
    global _last_seq
    _last_seq = max(time.time_ns(), _last_seq + 1)
    return _last_seq


def _aad(pool, ctx, header):
    return pool.encode() + b"\0" + ctx.encode() + b"\0" + header


def _signed(aad, body):
    return _SEAL_DOMAIN + len(aad).to_bytes(4, "big") + aad + body


def _seal(keys, ctx, plaintext):
    """`plaintext` as a sealed record for `ctx`: encrypted with the CipherShard, signed with the
    OblivionSeal, under the newest generation held."""
    generation = keys.latest
    aead = keys._cipher(generation, "encrypting")
    signer = keys._writer(generation)
    nonce = os.urandom(12)
    header = _SEAL_MAGIC + generation.to_bytes(4, "big") + _next_seq().to_bytes(8, "big") + nonce
    aad = _aad(keys.pool, ctx, header)
    body = header + aead.encrypt(nonce, bytes(plaintext), aad)
    return body + signer.sign(_signed(aad, body))


def _open(keys, ctx, sealed, verifiers):
    """A sealed record's (plaintext, generation, seq, nonce): its signature verified against the
    generation's write verifier first, then decrypted. CRYPTO for anything else."""
    c = _crypto()
    if len(sealed) < _SEAL_HEADER_LEN + _SEAL_TAG_LEN + _SEAL_SIGNATURE_LEN or sealed[:4] != _SEAL_MAGIC:
        raise _crypto_error("not a sealed record")
    generation, seq = int.from_bytes(sealed[4:8], "big"), int.from_bytes(sealed[8:16], "big")
    nonce, body, signature = sealed[16:28], sealed[:-_SEAL_SIGNATURE_LEN], sealed[-_SEAL_SIGNATURE_LEN:]
    verifier = verifiers.get(generation)
    if verifier is None:
        raise _crypto_error(f"unknown key generation {generation}")
    aad = _aad(keys.pool, ctx, sealed[:_SEAL_HEADER_LEN])
    try:
        c["Ed25519PublicKey"].from_public_bytes(verifier).verify(signature, _signed(aad, body))
    except (c["InvalidSignature"], ValueError):
        raise _crypto_error("the record's signature does not verify: it was not written by a holder of the "
                            "OblivionSeal, or it was altered") from None
    aead = keys._cipher(generation, "decrypting")
    try:
        plaintext = aead.decrypt(nonce, body[_SEAL_HEADER_LEN:], aad)
    except c["InvalidTag"]:
        raise _crypto_error("the record does not decrypt with this CipherShard (wrong key, or another pool or "
                            "context)") from None
    return plaintext, generation, seq, nonce


class _ReplayGuard:
    """What a reader remembers to refuse replays (the Rust SDK's ReplayGuard): the newest record
    read of each block and stream, and the messages of the last five minutes."""

    def __init__(self):
        self._last = {}
        # The messages read in the window: a set to look up, and their order to forget the
        # oldest first (a scan of all of them per message made a busy handler quadratic).
        self._seen = set()
        self._order = collections.deque()

    def block(self, ctx, seq):
        last = self._last.get(ctx, 0)
        if seq < last:
            raise _crypto_error(f"replayed record rejected: {ctx} holds a record sealed at {seq} ns, older than one "
                                f"already read ({last} ns)")
        self._last[ctx] = seq

    def stream(self, ctx, seq):
        last = self._last.get(ctx, 0)
        if seq <= last:
            raise _crypto_error(f"replayed record rejected: {ctx} holds a record sealed at {seq} ns, not after one "
                                f"already read ({last} ns)")
        self._last[ctx] = seq

    def message(self, seq, nonce):
        now = time.time_ns()
        while self._order and self._order[0][0] + _REPLAY_WINDOW_NS < now:
            self._seen.discard(self._order.popleft())
        if seq + _REPLAY_WINDOW_NS < now or seq > now + _REPLAY_WINDOW_NS:
            raise _crypto_error("replayed record rejected: sealed outside the replay window")
        if (seq, nonce) in self._seen:
            raise _crypto_error("replayed record rejected: this message was already delivered")
        self._seen.add((seq, nonce))
        self._order.append((seq, nonce))


def _b64(data):
    return base64.b64encode(data).decode()


def _unb64(text, what):
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        raise _crypto_error(f"{what} is not base64") from None


class EncryptedPool:
    """An encrypted pool this app joined with its keys (`Client.encrypted_pool`): calls, emits,
    handlers, binary blocks and stream records whose contents are sealed end to end, as the
    Rust SDK's EncryptedPool seals them (the two read each other's records). The server routes
    and stores only sealed records. Errors of the sealing itself raise LatZeroError CRYPTO (a
    key not held, a record that does not verify or decrypt, a replay).

    After a reconnect the handle proves the SigilKey again and re-joins; its operations wait for
    that first, and raise its error if it failed. `close()` stops the re-joining (the app stays
    in the pool until it leaves or disconnects)."""

    def __init__(self, client, keys):
        self._client = client
        self._keys = keys
        self._writes = {}
        self._guard = _ReplayGuard()
        self._appending = asyncio.Lock()
        self._rejoining = None
        self._closed = False
        client.on("reconnected", self._on_reconnected)
        client.on("pool_left", self._on_pool_left)

    def __repr__(self):
        return f"EncryptedPool(pool={self.pool!r})"

    @property
    def pool(self):
        return self._keys.pool

    def close(self):
        """Stops re-joining after reconnects."""
        self._closed = True

    def _on_reconnected(self, _detail):
        if not self._closed:
            self._rejoining = asyncio.ensure_future(self._join())
            # Told here too, for a handle nobody uses until the next reconnect.
            self._rejoining.add_done_callback(self._told)

    def _told(self, task):
        if not task.cancelled() and task.exception() is not None and not self._client._closed:
            _log.warning("could not re-join encrypted pool %r: %s", self.pool, task.exception())

    def _on_pool_left(self, detail):
        # Taken out of the pool (its owner removed it): not joined again.
        if detail.get("pool") == self.pool:
            self._closed = True

    async def _ready(self):
        """Waits for a re-join under way; raises its error if it failed."""
        joining = self._rejoining
        if joining is not None:
            try:
                await asyncio.shield(joining)
            except LatZeroError as e:
                raise LatZeroError(e.code, f"could not re-join encrypted pool '{self.pool}' after a reconnect: {e.message}") from None

    async def _join(self):
        """Proves the SigilKey for the pool's newest key generation and joins. The write verifiers
        the server gives are checked against our own OblivionSeal where we hold it, before the
        proof is sent."""
        client, keys, pool = self._client, self._keys, self.pool
        ch = await client._request({"action": "pool_challenge", "pool": pool}, client._timeout)

        def bad(what):
            return LatZeroError("PROTOCOL", f"pool_challenge answer without a valid `{what}`")
        generation = ch.get("generation")
        if type(generation) is not int or not 0 <= generation <= _U32_MAX:
            raise bad("generation")
        try:
            nonce = base64.b64decode(ch.get("nonce"), validate=True)
        except (TypeError, ValueError):
            raise bad("nonce") from None
        writes = {}
        verifiers = ch.get("write_verifiers")
        if not isinstance(verifiers, dict):
            raise bad("write_verifiers")
        for g, v in verifiers.items():
            try:
                g, v = int(g), base64.b64decode(v, validate=True)
            except (TypeError, ValueError):
                raise bad("write_verifiers") from None
            if len(v) != 32 or not 0 <= g <= _U32_MAX:
                raise bad("write_verifiers")
            if keys.has("seal", g) and keys.write_verifier(g) != v:
                raise _crypto_error(f"the server's write verifier for key generation {g} does not match our "
                                    "OblivionSeal; refusing to trust it")
            writes[g] = v
        app = client.app_id.encode()
        message = (_JOIN_DOMAIN + len(pool.encode()).to_bytes(4, "big") + pool.encode() + len(app).to_bytes(4, "big")
                   + app + generation.to_bytes(4, "big") + nonce)
        signature = keys._joiner(generation).sign(message)
        await client._request({"action": "pool_prove", "pool": pool, "signature": _b64(signature)}, client._timeout)
        self._writes = writes

    # Messages.

    def _seal_value(self, ctx, value):
        return _b64(_seal(self._keys, ctx, _json(value).encode()))

    def _open_message(self, ctx, data):
        """A sealed message (`data` as it came on the wire), opened once."""
        if not isinstance(data, str):
            raise _crypto_error("not a sealed record")
        plaintext, _, seq, nonce = _open(self._keys, ctx, _unb64(data, "a sealed record"), self._writes)
        self._guard.message(seq, nonce)
        return _json_payload(plaintext)

    def _open_error(self, trigger, e):
        """A call's error: a handler's sealed error opened (or why it cannot be); anything else
        as it came (the server's own errors are plaintext)."""
        err = e.error
        if e.code != "HANDLER_ERROR" or not isinstance(err, dict) or list(err) != ["sealed"]:
            return e
        try:
            return _handler_error(self._open_message(f"error/{trigger}", err["sealed"]))
        except LatZeroError as why:
            return why

    async def call(self, trigger, data=None, *, timeout=None, to=None):
        """Calls a trigger with a sealed payload and opens the sealed answer (needs the
        CipherShard and the OblivionSeal). A handler's error comes sealed too, and is opened into
        LatZeroError HANDLER_ERROR; the server's own errors (TIMEOUT, NO_HANDLER) are plaintext."""
        await self._ready()
        sealed = self._seal_value(f"msg/{trigger}", data)
        try:
            answer = await self._client.call(self.pool, trigger, sealed, timeout=timeout, to=to)
        except LatZeroError as e:
            raise self._open_error(trigger, e) from None
        return self._open_message(f"reply/{trigger}", answer)

    async def broadcast(self, trigger, data=None, *, timeout=None):
        """Client.broadcast with a sealed payload: one dict per handler, its `response` or its
        `error` opened (a handler's sealed error into HANDLER_ERROR; an answer that does not
        open is that handler's error, CRYPTO)."""
        await self._ready()
        sealed = self._seal_value(f"msg/{trigger}", data)
        out = []
        for r in await self._client.broadcast(self.pool, trigger, sealed, timeout=timeout):
            if "error" in r:
                out.append({"app_id": r["app_id"], "error": self._open_error(trigger, r["error"])})
                continue
            try:
                out.append({"app_id": r["app_id"], "response": self._open_message(f"reply/{trigger}", r["response"])})
            except LatZeroError as e:
                out.append({"app_id": r["app_id"], "error": e})
        return out

    async def emit(self, trigger, data=None, *, confirm=True):
        """Emits a sealed payload (needs the CipherShard and the OblivionSeal); as Client.emit."""
        await self._ready()
        return await self._client.emit(self.pool, trigger, self._seal_value(f"msg/{trigger}", data), confirm=confirm)

    async def handle(self, trigger, fn):
        """Handles a trigger: calls and emits in this pool reach fn opened (verified, decrypted,
        checked for replays; anything else is refused with a handler error and never reaches
        fn), and its answer is sealed (answering needs the OblivionSeal), and so is its error: a
        handler that cannot seal answers an error saying so, without its error's contents. A
        cancelled handler's error ("the handler was cancelled") is plaintext. In other pools fn
        sees payloads as they are. fn is a plain function or a coroutine function, as for
        Client.handle."""
        _callable(fn, "a handler")
        pool = self.pool

        def opened(req):
            if req.pool != pool:
                return fn(req)
            try:
                req.data = self._open_message(f"msg/{req.process}", req.data)
            except LatZeroError as e:
                raise HandlerError({"message": f"rejected sealed payload: {e.message}"}) from None
            try:
                out = fn(req)
            except Exception as e:
                raise self._sealed_failure(req.process, e) from None
            if inspect.isawaitable(out):
                return self._answer_later(req.process, out)
            return self._seal_answer(req.process, out)
        await self._client.handle(trigger, opened)

    async def _answer_later(self, process, waiting):
        try:
            out = await waiting
        except Exception as e:
            raise self._sealed_failure(process, e) from None
        return self._seal_answer(process, out)

    def _seal_answer(self, process, out):
        try:
            return self._seal_value(f"reply/{process}", out)
        except LatZeroError as e:
            raise HandlerError({"message": f"cannot seal the answer: {e.message}"}) from None

    def _sealed_failure(self, process, e):
        try:
            return HandlerError({"sealed": self._seal_value(f"error/{process}", _failure(e))})
        except LatZeroError as why:
            return HandlerError({"message": f"the handler failed, and cannot seal its error: {why.message}"})

    # Blocks.

    def _block(self, block):
        """(block id, read, write) for `block`: a block id, used through the server, or a Block
        from `Client.block_attach` of this pool, read and written in place where it is mapped
        (and attached for writing), through the server otherwise."""
        if isinstance(block, Block):
            if block.pool != self.pool:
                raise LatZeroError("INVALID_OPTIONS", f"block {block.pool}/{block.block_id} is not in the encrypted pool {self.pool!r}")
            return block.block_id, block.read, lambda record: block.write(0, record)

        async def read(offset=0, length=None):
            return await self._client.block_read(self.pool, block, offset=offset, length=length)

        async def write(record):
            return await self._client.block_write(self.pool, block, record)
        return block, read, write

    async def write_block(self, block, plaintext):
        """Writes `plaintext` (bytes) as the binary block's sealed record (length-prefixed at
        offset 0: the block must hold 4 + 28 + plaintext + 16 + 64 bytes). `block` is its id
        (written through the server) or a Block attached for writing (written in place where
        `writable`; readers check such a write, the server does not). Returns the block's
        version."""
        await self._ready()
        block_id, _, write = self._block(block)
        sealed = _seal(self._keys, f"block/{block_id}", plaintext)
        return await write(len(sealed).to_bytes(4, "big") + sealed)

    async def read_block(self, block):
        """Reads, verifies and decrypts the binary block's sealed record: (plaintext, version).
        `block` is its id (read through the server) or an attached Block (read in place where
        mapped). A record older than one this handle already read (a replayed old write) is
        refused."""
        await self._ready()
        block_id, read, _ = self._block(block)
        ctx = f"block/{block_id}"
        for _ in range(3):
            prefix, _ = await read(length=4)
            n = int.from_bytes(prefix[:4], "big")
            if len(prefix) < 4 or n == 0:
                raise _crypto_error("not a sealed record (the block holds none)")
            try:
                buf, version = await read(length=4 + n)
            except LatZeroError as e:
                if e.code != "OUT_OF_RANGE":
                    raise
                raise _crypto_error(f"not a sealed record: its length prefix ({n} bytes) does not fit ({e.message})") from None
            if buf[:4] != prefix[:4]:
                continue  # rewritten between the two reads
            plaintext, _, seq, _ = _open(self._keys, ctx, buf[4:], self._writes)
            self._guard.block(ctx, seq)
            return plaintext, version
        raise LatZeroError("PROTOCOL", "the block kept changing while being read; try again")

    async def write_json(self, block, document):
        """Writes `document` as JSON into a binary block of the pool, as its sealed record
        (write_block; `block` as there): json blocks are not available in encrypted pools,
        since the server cannot check a document it cannot read. Returns the block's version."""
        return await self.write_block(block, _json(document).encode())

    async def read_json(self, block):
        """The document write_json sealed into the block (`block` as in read_block), and the
        block's version."""
        plaintext, version = await self.read_block(block)
        return _json_payload(plaintext), version

    async def append(self, block_id, plaintext):
        """Appends `plaintext` (bytes) to a stream block of the pool as one sealed record, through
        the server, which checks that it was sealed after the stream's newest record; one that
        another writer's append overtook is sealed again (up to 8 times in all). One append of
        this handle is in flight at a time, so its records leave in the order they were sealed.
        Returns (index, version)."""
        await self._ready()
        ctx = f"stream/{block_id}"
        async with self._appending:
            for attempt in range(_APPEND_TRIES):
                try:
                    return await self._client.block_append(self.pool, block_id, _seal(self._keys, ctx, plaintext))
                except LatZeroError as e:
                    if e.code != "STALE_RECORD" or attempt + 1 == _APPEND_TRIES:
                        raise

    async def consume(self, block_id, consumer, *, max=1000):
        """Reads up to `max` records of a stream block from the named consumer's cursor, as
        Client.block_consume, each verified and decrypted: `records` holds, in stream order, each
        record's plaintext (bytes) or, in its place, the LatZeroError CRYPTO it was refused with
        (not sealed by a holder of the OblivionSeal, altered, sealed for another stream, or not
        sealed after the last record this handle read from the stream). The cursor has moved
        past all of them."""
        await self._ready()
        ctx = f"stream/{block_id}"
        r = await self._client.block_consume(self.pool, block_id, consumer, max=max)
        records = []
        for sealed in r["records"]:
            try:
                plaintext, _, seq, _ = _open(self._keys, ctx, sealed, self._writes)
                self._guard.stream(ctx, seq)
                records.append(plaintext)
            except LatZeroError as e:
                records.append(e)
        r["records"] = records
        return r


def _json_payload(data):
    """An opened record's JSON."""
    try:
        return json.loads(data)
    except ValueError as e:
        raise LatZeroError("INVALID_JSON", f"an opened record is not JSON: {e}") from None


_SEQ_CST = 5  # __ATOMIC_SEQ_CST
@functools.cache
def _cas():
    """libatomic's 8-byte compare-and-swap, loaded once; None where libatomic is missing."""
    try:
        fn = ctypes.CDLL("libatomic.so.1").__atomic_compare_exchange_8
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_bool
    return fn


def _give_up(writer, start):
    """For a mapped read or write that keeps finding the write side taken: whether to leave it
    to the server (its holder `writer` died, or this has waited its patience out); else yields
    the CPU once and goes on."""
    if writer and not _pid_alive(writer):
        return True
    if time.monotonic() - start > _MAPPED_READ_PATIENCE:
        return True
    time.sleep(0)
    return False


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# One encoder for every frame: json.dumps with separators builds a new one per call.
# NaN and Infinity are not JSON: Python's default writes them, and a server refuses the frame
# without being able to tell whose call it was (the call waited out its timeout).
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_raw_decode = json.JSONDecoder().raw_decode
# The most read from the socket at once.
READ_CHUNK = 256 * 1024
# Frames queued in one turn are written at once when they reach this many bytes.
WRITE_BATCH = 256 * 1024
# How often waiting requests are checked against their deadlines, seconds.
SWEEP_INTERVAL = 0.1


def _decode(text):
    """A frame's JSON: exactly one value (the server writes no whitespace around it)."""
    value, end = _raw_decode(text)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _failure(e):
    """A handler's exception as the error a caller receives."""
    if isinstance(e, HandlerError):
        return e.error
    if isinstance(e, asyncio.CancelledError):
        return {"message": "the handler was cancelled"}
    return {"message": str(e) or type(e).__name__}


def _handler_error(err):
    """A handler's own error (a response with status error) as a LatZeroError HANDLER_ERROR."""
    message = err.get("message") if isinstance(err, dict) and isinstance(err.get("message"), str) else json.dumps(err)
    return LatZeroError("HANDLER_ERROR", message, error=err)


def _frame(obj):
    """A JSON frame of `obj`, a message or its JSON text."""
    payload = (obj if isinstance(obj, str) else _json(obj)).encode()
    return len(payload).to_bytes(4, "big") + payload


_encode_str = json.encoder.encode_basestring_ascii


# The events `Client.on` takes.
EVENTS = ("disconnected", "reconnected", "reconnect_refused", "pool_left", "trigger_refused", "presence",
          "lock_expired", "server_error")


def _callable(fn, what):
    """INVALID_OPTIONS unless `fn` can be called (found here, not when the first event calls it)."""
    if not callable(fn):
        raise LatZeroError("INVALID_OPTIONS", f"{what} must be a function, got {type(fn).__name__}")


def _ms(seconds, what, zero=False):
    """`seconds` as whole milliseconds for the wire, rounded up (a deadline is never cut short).
    INVALID_OPTIONS for anything but a finite number above zero (or zero, where it means "do not
    wait"): a negative or NaN timeout was clamped to 1 ms, or raised a bare ValueError."""
    number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
    ok = number and math.isfinite(seconds) and (seconds > 0 or (zero and seconds == 0))
    if not ok:
        at_least = "zero or more" if zero else "above zero"
        raise LatZeroError("INVALID_OPTIONS", f"{what} must be a number of seconds {at_least}, got {seconds!r}")
    return max(1, math.ceil(seconds * 1000)) if seconds > 0 else 0


def _json(value):
    """`value` as JSON text, as json.dumps gives it (but NaN and Infinity refused); the common
    scalars without building an encoder. INVALID_JSON for a value that is not JSON."""
    try:
        return _json_text(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise LatZeroError("INVALID_JSON", f"not sent: the value is not JSON: {e}") from None


def _json_text(value):
    t = type(value)
    if t is str:
        return _encode_str(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return int.__repr__(value)
    return _encode(value)


async def _read_frame(reader, max_len):
    """The next frame as (message, body), read on its own (the handshake's answer)."""
    head = await reader.readexactly(4)
    (n,) = struct.unpack(">I", head)
    if n > max_len:
        raise LatZeroError("FRAME_TOO_LARGE", f"the server announced a frame of {n} bytes, more than the {max_len} read")
    return _parse_payload(await reader.readexactly(n))


def _parse_payload(payload):
    """A frame's payload as (message, body): a JSON frame's body is None, a binary frame's the
    bytes after its header (PROTOCOL.md §2.2). ValueError for a frame that does not read: empty,
    a binary header past the frame's end, text that is not UTF-8 or not one JSON object."""
    if not payload:
        raise ValueError("an empty frame")
    if payload[0] != 0:
        message, body = _decode(payload.decode()), None
    else:
        if len(payload) < 5:
            raise ValueError(f"a binary frame of {len(payload)} bytes, shorter than its header's length")
        (h,) = struct.unpack(">I", payload[1:5])
        if 5 + h > len(payload):
            raise ValueError(f"a binary frame whose header of {h} bytes runs past its end")
        message, body = _decode(payload[5:5 + h].decode()), payload[5 + h:]
    if not isinstance(message, dict):
        raise ValueError(f"a frame that is not a JSON object ({type(message).__name__})")
    return message, body


async def _read_json(reader, max_len):
    """The next JSON frame (the handshake's answer)."""
    message, _ = await _read_frame(reader, max_len)
    return message


def _binary_frame(header, body):
    h = json.dumps(header, separators=(",", ":")).encode()
    payload = b"\x00" + struct.pack(">I", len(h)) + h + bytes(body)
    return struct.pack(">I", len(payload)) + payload
