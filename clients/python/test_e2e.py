"""End-to-end test of clients/python/latzero.py against a real server, run by
crates/latzero-cli/tests/python.rs, which starts `latzero start` and a `latzero reply` worker
serving `echo` in pool `demo`, and restarts the server when this prints `restart`. Prints
`ok NAME` per check and `done` at the end; any failure exits 1 with the reason.

    LATZERO_SOCKET=/path/to/latzero.sock python3 clients/python/test_e2e.py
"""

import asyncio
import contextvars
import json
import logging
import mmap
import os
import subprocess
import sys
import traceback
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import latzero  # noqa: E402
from checking import check, raises  # noqa: E402

SOCKET = os.environ["LATZERO_SOCKET"]


def once(client, event, timeout=20.0, which=lambda d: True):
    fut = asyncio.get_running_loop().create_future()
    client.on(event, lambda d: fut.done() or not which(d) or fut.set_result(d))
    return asyncio.wait_for(fut, timeout)


CLOSING_SENDER = r"""
import asyncio, logging, os, socket, sys
sys.path.insert(0, os.environ["LATZERO_PY"])
import latzero

async def main():
    logging.basicConfig()
    c = await latzero.connect("py-closing", pools=["demo"], socket=os.environ["LATZERO_SOCKET"], ephemeral=True,
                              close_grace=float(os.environ["CLOSE_GRACE"]))
    # A small send buffer, so that the kernel cannot take the emits below whatever its default.
    c._writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for i in range(6):
        await c.emit("demo", "closing_tally", {"i": i, "pad": "x" * 10000}, confirm=False)
    await asyncio.sleep(0)  # the turn's frames handed to the transport
    print("held", c._writer.transport.get_write_buffer_size() + sum(map(len, c._out)), flush=True)
    await c.close()
    print("closed", flush=True)

asyncio.run(main())
"""


async def closing_sender(close_grace):
    """A process that queues emits and closes (CLOSING_SENDER), and a reader of its lines."""
    env = dict(os.environ, LATZERO_PY=os.path.dirname(os.path.abspath(latzero.__file__)), CLOSE_GRACE=str(close_grace))
    sender = await asyncio.create_subprocess_exec(sys.executable, "-c", CLOSING_SENDER, env=env, stdin=subprocess.PIPE,
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return sender, lambda: asyncio.wait_for(sender.stdout.readline(), 20)


async def closing_writes_what_was_queued(worker):
    import signal
    status = await worker._request({"action": "status"}, 5)
    server = status["server"]["pid"]
    got, all_got = [], asyncio.get_running_loop().create_future()

    def arrived(req):
        got.append(req.data["i"])
        if len(got) == 6:
            all_got.set_result(None)

    await worker.handle("closing_tally", arrived)
    sender, line = await closing_sender(5.0)
    check(await line() == b"ready\n", "the closing sender connected")
    os.kill(server, signal.SIGSTOP)
    try:
        sender.stdin.write(b"go\n")
        held = (await line()).split()
        check(held[0] == b"held" and int(held[1]) > 0, "emits held in the client while the server is stopped", held)
        try:
            await asyncio.wait_for(sender.wait(), 1.0)
            ended = True
        except asyncio.TimeoutError:
            ended = False
        check(not ended, "close() waits for the held emits to be written (the sender did not end)")
    finally:
        os.kill(server, signal.SIGCONT)
    check(await asyncio.wait_for(sender.wait(), 20) == 0, "the sender ended once they were written")
    check(await line() == b"closed\n", "its close() returned")
    await asyncio.wait_for(all_got, 10)
    check(got == list(range(6)), "every emit queued before close() arrived, in order", got)
    await worker.unhandle("closing_tally")

    # A server that reads nothing holds close() up for the close grace only, and the bytes it
    # drops then are told.
    sender, line = await closing_sender(0.2)
    check(await line() == b"ready\n", "a second closing sender connected")
    os.kill(server, signal.SIGSTOP)
    try:
        sender.stdin.write(b"go\n")
        check((await line()).startswith(b"held "), "its emits held in the client")
        ended = await asyncio.wait_for(sender.wait(), 20)
    finally:
        os.kill(server, signal.SIGCONT)
    told = (await sender.stderr.read()).decode()
    check(ended == 0 and await line() == b"closed\n", "close() returned after the grace, the server still stopped")
    check("were not written" in told and "close grace (0.2 s)" in told, "the bytes it dropped are told", told)


async def main():
    opts = dict(socket=SOCKET, ephemeral=True, timeout=5.0, backoff_min=0.02, backoff_max=0.2)
    worker = await latzero.connect("py-worker", pools=["demo"], **opts)
    echoed = await worker.call("demo", "echo", {"x": 21})
    check(echoed["data"] == {"x": 21} and echoed["app_id"] == "worker", "call a CLI worker", echoed)

    await worker.handle("greet", lambda req: f"hello {req.data} from {req.origin}")

    async def double(req):
        await asyncio.sleep(0)
        return req.data["x"] * 2

    await worker.handle("double", double)

    def fail(req):
        raise ValueError("nope")

    await worker.handle("fail", fail)
    await worker.handle("slow", lambda req: asyncio.sleep(3600))
    other = await latzero.connect("py-other", pools=["demo"], **opts)

    # A latzero:// URL, as the Rust SDK and the CLI take it; what PROTOCOL §12 refuses is refused.
    by_url = await latzero.connect(f"latzero://py-url?socket={urllib.parse.quote(SOCKET)}&pools=demo", ephemeral=True)
    check((await by_url.call("demo", "echo", 7))["data"] == 7, "connect by URL")
    await by_url.close()
    for url in ("latzero://a@nohost", "latzero://a@h:1?socket=/s", "latzeros://a", "latzero://a?fingerprint=00",
                "latzero://a?nope=1", "latzeros://a@h:1?ca=/c&fingerprint=" + "0" * 64):
        e = await raises(latzero.connect(url))
        check(e.code == "INVALID_URL", f"refused: {url}", str(e))
    e = await raises(latzero.connect("latzero://a?pools=demo", pools=["x"]))
    check(e.code == "INVALID_URL" and "pools" in e.message, "an option given twice", str(e))
    check(await other.call("demo", "greet", "ada") == "hello ada from py-other", "call a sync handler")
    check(await other.call("demo", "double", {"x": 21}) == 42, "call an async handler")

    # A coroutine runs as a task of its own (eagerly started on 3.12+): one that never waits,
    # or fails before or after its wait, answers as expected.
    async def quick(req):
        return req.data + 1

    async def early(req):
        raise ValueError("early")

    async def late(req):
        await asyncio.sleep(0.01)
        raise ValueError("late")

    for name, fn in (("quick", quick), ("early", early), ("late", late)):
        await worker.handle(name, fn)
    check(await other.call("demo", "quick", 1) == 2, "an async handler that never waits")
    # One that meets a cancelled future at once fails its call; the read loop it ran in goes on.
    gone = asyncio.get_running_loop().create_future()
    gone.cancel()

    async def cancelled(req):
        return await gone

    await worker.handle("cancelled", cancelled)
    e = await raises(other.call("demo", "cancelled"))
    check(e.code == "HANDLER_ERROR" and "cancelled" in e.message, "a handler cancelled at once", str(e))
    check(await other.call("demo", "quick", 2) == 3, "and its client still serves", None)
    # `asyncio.timeout` in a handler times the handler out, not the client's read loop (when
    # the handler's first step ran in the read loop, the timeout cancelled the loop: the call
    # got "late", and the client never read again). Its context is its own too.
    marker = contextvars.ContextVar("marker", default="unset")

    async def bounded(req):
        marker.set("handler's")
        if sys.version_info < (3, 11):  # no asyncio.timeout
            raise TimeoutError()
        async with asyncio.timeout(0.05):
            await asyncio.sleep(5)
        return "late"

    await worker.handle("bounded", bounded)
    e = await raises(other.call("demo", "bounded"))
    check(e.code == "HANDLER_ERROR" and "TimeoutError" in e.message, "asyncio.timeout in a handler", str(e))
    check(await other.call("demo", "quick", 3) == 4, "and the client still reads", None)

    async def peek(req):
        return marker.get()

    await worker.handle("peek", peek)
    check(await other.call("demo", "peek") == "unset", "a handler's context variables stay its own", None)
    for name in ("early", "late"):
        e = await raises(other.call("demo", name))
        check(e.code == "HANDLER_ERROR" and name in e.message, f"an async handler failing {name}", str(e))
    e = await raises(other.call("demo", "fail"))
    check(e.code == "HANDLER_ERROR" and "nope" in e.message, "a handler's exception", str(e))
    # HandlerError answers with its value as the error, as it is; one that is not JSON says so.
    def refuse(req):
        raise latzero.HandlerError({"n": {1, 2}} if req.data == "set" else {"message": "over the limit", "limit": 3})

    await worker.handle("refuse", refuse)
    e = await raises(other.call("demo", "refuse"))
    check(e.code == "HANDLER_ERROR" and e.error == {"message": "over the limit", "limit": 3}
          and e.message == "over the limit", "a HandlerError's value", (str(e), e.error))
    e = await raises(other.call("demo", "refuse", "set"))
    check(e.code == "HANDLER_ERROR" and "not JSON" in e.message, "a HandlerError that is not JSON", str(e))
    e = await raises(other.call("demo", "nobody-serves-this"))
    check(e.code == "NO_HANDLER", "NO_HANDLER", str(e))
    e = await raises(other.call("demo", "slow", timeout=0.2))
    check(e.code == "TIMEOUT" and e.handler_may_still_run is True, "TIMEOUT", str(e))
    e = await raises(other.call("elsewhere", "echo"))
    check(e.code == "NOT_IN_POOL", "NOT_IN_POOL", str(e))

    # Many calls in one turn of the event loop go out in one write and come back in a few
    # reads; each gets its own answer.
    answers = await asyncio.gather(*(other.call("demo", "greet", i) for i in range(300)))
    check(answers == [f"hello {i} from py-other" for i in range(300)], "300 calls at once, each answered", answers[:3])
    # A result past the frame limit reaches the caller as the handler's error, not its timeout.
    await worker.handle("huge", lambda req: "x" * (17 << 20))
    e = await raises(other.call("demo", "huge", timeout=10))
    check(e.code == "HANDLER_ERROR" and "too large" in e.message, "a result too large to send", str(e))
    await worker.handle("setish", lambda req: {1, 2})
    e = await raises(other.call("demo", "setish"))
    check(e.code == "HANDLER_ERROR" and "not JSON" in e.message, "a result that is not JSON", str(e))
    await worker.handle("nan", lambda req: float("nan"))
    e = await raises(other.call("demo", "nan"))
    check(e.code == "HANDLER_ERROR" and "not JSON" in e.message, "a NaN result is not JSON", str(e))
    # Data that is not JSON is refused before it is sent, at once: NaN went out as Python
    # writes it, the server could not tell whose frame it refused, and the call waited out its
    # timeout (NO_REPLY).
    for send in (lambda v: other.call("demo", "greet", v, timeout=30), lambda v: other.emit("demo", "greet", v),
                 lambda v: other.emit("demo", "greet", v, confirm=False),
                 lambda v: other.broadcast("demo", "greet", v)):
        for bad in (float("nan"), {"x": float("-inf")}, {1, 2}):
            e = await raises(asyncio.wait_for(send(bad), 5))
            check(e.code == "INVALID_JSON" and "not sent" in e.message, "data that is not JSON is refused", str(e))
    # A timeout, lease or wait that is not a number of seconds above zero is refused, not
    # clamped to a millisecond (a negative timeout was) or raised as a bare ValueError (NaN).
    for bad in (0, -1, float("nan"), float("inf"), "5"):
        for attempt in (other.call("demo", "greet", 1, timeout=bad), other.broadcast("demo", "greet", timeout=bad),
                        other.block_lock("demo", "cfg", lease=bad)):
            e = await raises(attempt)
            check(e.code == "INVALID_OPTIONS", "a timeout that is not above zero is refused", (bad, str(e)))
    e = await raises(other.block_lock("demo", "cfg", wait=-1))
    check(e.code == "INVALID_OPTIONS", "a negative wait is refused", str(e))
    e = await raises(latzero.connect("py-bad", socket=SOCKET, close_grace=-1))
    check(e.code == "INVALID_OPTIONS" and "close_grace" in e.message, "a negative close grace is refused", str(e))
    # A misspelt event would never fire, and a handler or watch that is not a function would
    # fail at its first event: both are refused where they are given.
    try:
        other.on("disconnect", print)
        raise AssertionError("on('disconnect') was taken")
    except latzero.LatZeroError as e:
        check(e.code == "INVALID_OPTIONS" and "disconnected" in e.message, "an event that does not exist", str(e))
    for attempt in (other.handle("nothing", None), other.block_watch("demo", "cfg", "not a function")):
        e = await raises(attempt)
        check(e.code == "INVALID_OPTIONS" and "must be a function" in e.message, "a handler that is not a function", str(e))
    check("nothing" not in other.triggers, "and not registered", other.triggers)
    # A server that takes the handshake and then says nothing: the client's own deadline ends
    # the call.
    silent_path = os.path.join(os.path.dirname(SOCKET), "silent.sock")

    async def silent(reader, writer):
        head = await reader.readexactly(4)
        await reader.readexactly(int.from_bytes(head, "big"))
        ack = b'{"action":"handshake_ack","in_reply_to":0,"pools":["demo"],"triggers":[]}'
        writer.write(len(ack).to_bytes(4, "big") + ack)
        await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_unix_server(silent, silent_path)
    quiet = await latzero.connect("py-quiet", socket=silent_path, pools=["demo"], timeout=0.2, reconnect=False)
    started = asyncio.get_running_loop().time()
    e = await raises(asyncio.wait_for(quiet.call("demo", "echo", timeout=0.1), 10))
    waited = asyncio.get_running_loop().time() - started
    check(e.code == "NO_REPLY" and 1.1 <= waited < 3, "a server gone quiet: NO_REPLY", (str(e), waited))
    await quiet.close()
    server.close()

    # A server that grants a lock and ends the connection in the same write (a frame too large
    # to read right behind the grant): the lease ended with the connection before block_lock
    # could take it up, so it is not taken for one held.
    granting_path = os.path.join(os.path.dirname(SOCKET), "granting.sock")

    async def granting(reader, writer):
        async def frame():
            head = await reader.readexactly(4)
            return json.loads(await reader.readexactly(int.from_bytes(head, "big")))

        await frame()
        ack = b'{"action":"handshake_ack","in_reply_to":0,"pools":["demo"],"triggers":[]}'
        writer.write(len(ack).to_bytes(4, "big") + ack)
        req = await frame()
        locked = json.dumps({"action": "block_locked", "in_reply_to": req["id"], "pool": "demo",
                             "block_id": "b", "mode": "exclusive", "lease_ms": 30000,
                             "renewed": False}).encode()
        writer.write(len(locked).to_bytes(4, "big") + locked + b"\xff\xff\xff\xff")
        await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_unix_server(granting, granting_path)
    dropping = await latzero.connect("py-dropping", socket=granting_path, pools=["demo"], reconnect=False)
    e = await raises(dropping.block_lock("demo", "b"))
    check(e.code == "DISCONNECTED" and e.sent is True, "a lock granted just before the connection drops", str(e))
    await dropping.close()
    server.close()

    # A server whose frames do not all read: each such frame is skipped with a warning, and
    # the connection stays (a reply right behind them is still taken).
    damaged_path = os.path.join(os.path.dirname(SOCKET), "damaged.sock")
    damaged = [b"", b"\xff\xfe", b"{not json", b"[1,2]", b"null", b"\x00\x00\x00",
               b"\x00\x00\x00\x00\x09{}", b"\x00\x00\x00\x00\x02[]",
               b'{"action":"trigger","id":"9","process":["x"],"pool":"demo"}',
               b'{"action":"block_event","pool":["a"],"block_id":"b","event":"changed"}',
               b'{"action":"pool_left","pool":{}}']

    async def damaging(reader, writer):
        async def frame():
            head = await reader.readexactly(4)
            return json.loads(await reader.readexactly(int.from_bytes(head, "big")))

        hs = await frame()
        if hs["app_id"] == "py-damaged-ack":
            writer.write(b"\x00\x00\x00\x02\xff\xfe")
        else:
            ack = b'{"action":"handshake_ack","in_reply_to":0,"pools":["demo"],"triggers":[]}'
            writer.write(len(ack).to_bytes(4, "big") + ack)
        while True:
            try:
                req = await frame()
            except asyncio.IncompleteReadError:
                break
            ok = json.dumps({"action": "response", "in_reply_to": req["id"], "status": "ok",
                             "response": "read"}).encode()
            writer.write(b"".join(len(b).to_bytes(4, "big") + b for b in damaged + [ok]))
        writer.close()

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record.getMessage())

    kept = Kept()
    logging.getLogger("latzero").addHandler(kept)
    server = await asyncio.start_unix_server(damaging, damaged_path)
    hurt = await latzero.connect("py-damaged", socket=damaged_path, pools=["demo"], reconnect=False)
    lost = []
    hurt.on("disconnected", lost.append)
    answers = [await hurt.call("demo", "x"), await hurt.call("demo", "x")]
    check(answers == ["read", "read"] and not lost, "a reply behind frames that do not read", (answers, lost))
    skipped = [r for r in kept.records if r.startswith("skipped a frame")]
    check(len(skipped) == 2 * len(damaged), "each skipped with a warning", kept.records)
    await hurt.close()
    e = await raises(latzero.connect("py-damaged-ack", socket=damaged_path, reconnect=False))
    check(e.code == "PROTOCOL" and "does not read" in e.message, "a handshake answer that does not read", str(e))
    logging.getLogger("latzero").removeHandler(kept)
    server.close()

    # Broadcast: every app serving the trigger answers, or fails, in its own entry.
    await worker.handle("who", lambda req: "worker")
    await other.handle("who", fail)
    replies = sorted(await worker.broadcast("demo", "who"), key=lambda r: r["app_id"])
    check([r["app_id"] for r in replies] == ["py-other", "py-worker"]
          and replies[0]["error"].code == "HANDLER_ERROR" and "nope" in replies[0]["error"].message
          and replies[1]["response"] == "worker", "a broadcast", replies)
    # Unhandled: no longer served, here or after a reconnect.
    await other.unhandle("who")
    check(await worker.broadcast("demo", "who") == [{"app_id": "py-worker", "response": "worker"}],
          "a trigger unhandled", None)
    await worker.unhandle("who")
    check("who" not in worker.triggers, "and not asked for again", worker.triggers)
    e = await raises(worker.broadcast("demo", "who"))
    check(e.code == "NO_HANDLER", "a broadcast nobody serves", str(e))

    got = asyncio.get_running_loop().create_future()
    await worker.handle("news", lambda req: got.set_result(req.data))
    check(await other.emit("demo", "news", {"n": 1}) == 1, "emit receipt")
    check((await asyncio.wait_for(got, 5))["n"] == 1, "emit delivered")
    # Fire-and-forget: nothing to wait for but the queue; more than one write's batch, all
    # delivered in order. A refusal comes as an event.
    seen, all_seen = [], asyncio.get_running_loop().create_future()

    def tally(req):
        seen.append(req.data)
        if len(seen) == 5000:
            all_seen.set_result(None)

    await worker.handle("tally", tally)
    for i in range(5000):
        check_none = await other.emit("demo", "tally", {"i": i, "pad": "x" * 64}, confirm=False)
        assert check_none is None, check_none
    # (Written out as each batch filled, not held until the loop gave the turn up.)
    check(sum(map(len, other._out)) < latzero.WRITE_BATCH, "a full batch is written at once")
    await asyncio.wait_for(all_seen, 10)
    check([d["i"] for d in seen] == list(range(5000)), "5000 emits without receipts, in order", len(seen))
    refused = once(other, "server_error")
    await other.emit("elsewhere", "tally", 1, confirm=False)
    check((await refused).code == "NOT_IN_POOL", "a refused emit without a receipt is told")

    # close() writes what was queued before it returns, so a program that ends right after it
    # loses nothing. The server is stopped (SIGSTOP) while a sender process queues more than its
    # socket takes: the rest waits in the client when it closes, and the sender must not end
    # until the server, continued, has read it all.
    await closing_writes_what_was_queued(worker)

    # Memory blocks, through the server: binary bytes at an offset, and a json document.
    await worker.block_create("demo", "frame", 16)
    v = await worker.block_write("demo", "frame", b"\x01\x02\x03", offset=2)
    data, seen = await other.block_read("demo", "frame", offset=2, length=3)
    check(data == b"\x01\x02\x03" and seen == v, "a binary block written and read", (data, v, seen))
    whole, _ = await other.block_read("demo", "frame")
    check(whole == b"\x00\x00\x01\x02\x03" + bytes(11), "the whole block", whole)
    # A frame larger than one read from the socket.
    big = os.urandom(3 << 20)
    await worker.block_create("demo", "big", len(big))
    await worker.block_write("demo", "big", big)
    data, _ = await other.block_read("demo", "big")
    check(data == big, "a 3 MiB frame read whole", len(data))
    await worker.block_delete("demo", "big")
    # Mapped here (the same host and user): read in place, without the server.
    mapped = await other.block_attach("demo", "frame")
    check(mapped.mapped, "a block mapped here", mapped.why_not_mapped)
    v = await worker.block_write("demo", "frame", b"\x09", offset=0)
    data, seen = await mapped.read(length=3)
    check(data == b"\x09\x00\x01" and seen == v, "a write read in place", (data, seen, v))
    view = mapped.view()
    check(bytes(view[2:5]) == b"\x01\x02\x03" and len(view) == 16, "a zero-copy view", bytes(view))
    view.release()
    # A writer that died mid-write (its pid in the header, the seqlock odd: made here through a
    # mapping of our own): the mapped read must not take the half-written bytes; it is read
    # through the server, which repairs the block (a version bump) — and in place after that.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(mapped.path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as header:
        words = memoryview(header).cast("Q")
        words[6], words[5] = dead.pid, words[5] + 1  # writer, seq
        words.release()
    data, seen = await mapped.read(length=3)
    check(data == b"\x09\x00\x01" and seen == v + 1, "a write left half done is repaired, not read", (data, seen, v))
    check((await mapped.read(length=1)) == (b"\x09", v + 1), "read in place again", None)
    # A write that begins and ends while a read copies (the seqlock moved on by two): the copy
    # is thrown away and made again. Driven here through the copy step itself, since a real
    # writer cannot be timed into the middle of a copy.
    with open(mapped.path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as header:
        words = memoryview(header).cast("Q")
        copies = []

        def copy():
            copies.append(1)
            if len(copies) == 1:
                words[5] += 2  # seq: a whole write happened meanwhile
                words[4] += 1  # version
            return len(copies)

        got = mapped._consistent(copy)
        words.release()
    check(got == (2, v + 2), "a copy a write overlapped is made again", got)
    # Written in place: the write side taken, the seqlock kept, the server told (watchers hear).
    check(not mapped.writable and mapped.why_not_writable == "attached for reading", "read-only unless asked", mapped.why_not_writable)
    writer = await worker.block_attach("demo", "frame", write=True)
    check(writer.writable, "a block mapped for writing", writer.why_not_writable)
    changes = asyncio.Queue()
    await other.block_watch("demo", "frame", changes.put_nowait)
    while (await asyncio.wait_for(changes.get(), 5))["event"] != "synced":
        pass
    v = await writer.write(4, b"\xaa\xbb")
    check(await other.block_read("demo", "frame", offset=4, length=2) == (b"\xaa\xbb", v), "a write in place, read through the server", v)
    ev = await asyncio.wait_for(changes.get(), 5)
    check((ev["event"], ev["version"], ev["offset"], ev["length"]) == ("changed", v, 4, 2), "and told to watchers", ev)
    check(await mapped.read(offset=4, length=2) == (b"\xaa\xbb", v), "and read in place elsewhere", None)
    # In turn with writes through the server, each sees the other's, versions in order.
    for i in range(100):
        a = await writer.write(0, bytes([i]) * 16)
        b = await other.block_write("demo", "frame", bytes([i + 1]) * 8, offset=8)
        got = await other.block_read("demo", "frame")
        if got != (bytes([i]) * 8 + bytes([i + 1]) * 8, b) or b != a + 1:
            check(False, "writes in place and through the server in turn", (i, a, b, got))
    check(True, "writes in place and through the server in turn", None)
    # A write side held by a live writer (a process standing in for one, its pid in `writer`):
    # not written in place; the server, left with it, waits its 2 s for the side and says BUSY.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with open(mapped.path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as header:
            words = memoryview(header).cast("Q")
            words[6] = holder.pid
            e = await raises(writer.write(0, b"\x77"))
            check(e.code == "BUSY" and (await mapped.read(length=1))[0] != b"\x77", "a write side held: not written", str(e))
            words[6] = 0
            words.release()
    finally:
        holder.kill()
        holder.wait()
    # A write side held by a writer that died: left to the server, which repairs it and writes.
    with open(mapped.path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as header:
        words = memoryview(header).cast("Q")
        words[6], words[5] = dead.pid, words[5] + 1  # writer, seq
        words.release()
    v = await writer.write(0, b"\x42")
    data, seen = await mapped.read(length=1)
    check(data == b"\x42" and seen == v, "a dead writer's side: written through the server, repaired", (data, seen, v))
    await other.block_unwatch("demo", "frame")
    writer.close()
    await worker.block_create("demo", "cfg", 64, type="json")
    v = await worker.block_write("demo", "cfg", document={"rate": 30})
    doc, seen = await other.block_read("demo", "cfg")
    check(doc == {"rate": 30} and seen == v, "a json block", (doc, v, seen))
    doc_block = await other.block_attach("demo", "cfg")
    doc, seen = await doc_block.read_json()
    check(doc_block.mapped and doc == {"rate": 30} and seen == v, "a json block read in place", (doc, seen))
    doc_block.close()
    # A json document written in place: its text and its length in one write of the seqlock.
    doc_writer = await worker.block_attach("demo", "cfg", write=True)
    check(doc_writer.writable, "a json block mapped for writing", doc_writer.why_not_writable)
    v = await doc_writer.write_json({"rate": 31, "name": "é"})
    check(await other.block_read("demo", "cfg") == ({"rate": 31, "name": "é"}, v), "a json document written in place", v)
    e = await raises(doc_writer.write_json({"x": float("nan")}))
    check(e.code == "INVALID_JSON", "NaN is not JSON", str(e))
    e = await raises(doc_writer.write_json("x" * 100))
    check(e.code == "OUT_OF_RANGE", "a document longer than the block", str(e))
    check(await other.block_read("demo", "cfg") == ({"rate": 31, "name": "é"}, v), "refused writes change nothing", None)
    doc_writer.close()
    # A document in the block that is not JSON (put into the mapping here, its version bumped):
    # INTERNAL, read in place as through the server.
    with open(doc_block.path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        words = memoryview(m).cast("Q")
        m[4096:4101] = b"{nope"
        words[7], words[4] = 5, words[4] + 1  # used, version
        words.release()
    doc_block = await other.block_attach("demo", "cfg")
    in_place, served = await raises(doc_block.read_json()), await raises(other.block_read("demo", "cfg"))
    check(in_place.code == served.code == "INTERNAL", "a stored document that is not JSON", (str(in_place), str(served)))
    doc_block.close()
    e = await raises(other.block_read("demo", "missing"))
    check(e.code == "BLOCK_NOT_FOUND", "BLOCK_NOT_FOUND", str(e))
    await worker.block_delete("demo", "frame")
    e = await raises(mapped.read())
    check(e.code == "BLOCK_NOT_FOUND", "a deleted block's mapping refuses reads", str(e))
    mapped.close()
    await worker.block_delete("demo", "cfg")

    # Streams: records appended, and a consumer's cursor.
    await worker.block_create("demo", "log", 4096, type="stream")
    for record in (b"a", b"bb", b"ccc"):
        await worker.block_append("demo", "log", record)
    got = await other.block_consume("demo", "log", "c1", max=2)
    check(got["records"] == [b"a", b"bb"] and got["next_index"] == 2, "a stream consumed", got)
    got = await other.block_consume("demo", "log", "c1", max=200_000)
    check(got["records"] == [b"ccc"] and got["skipped"] == 0, "the consumer's cursor moved (a max past the server's bound reads)", got)
    await worker.block_delete("demo", "log")

    # Locks: an exclusive lease keeps another writer out until it is released or runs out.
    await worker.block_create("demo", "shared", 8)
    lease = await worker.block_lock("demo", "shared")
    check(lease["mode"] == "exclusive" and lease["renewed"] is False, "a lock", lease)
    e = await raises(other.block_write("demo", "shared", b"x"))
    check(e.code == "LOCKED", "a write under another's lease is LOCKED", str(e))
    e = await raises(other.block_lock("demo", "shared"))
    check(e.code == "LOCKED", "a second lock is LOCKED", str(e))
    await worker.block_unlock("demo", "shared")
    await other.block_write("demo", "shared", b"x")
    expired = once(other, "lock_expired", which=lambda d: d["block_id"] == "shared")
    await other.block_lock("demo", "shared", lease=0.05)
    check((await expired)["mode"] == "exclusive", "lock_expired")
    await worker.block_delete("demo", "shared")

    # Watches: a persistent block's outlives the restart below; a non-persistent block's ends
    # with it.
    changes, scratch = asyncio.Queue(), asyncio.Queue()
    await worker.block_create("demo", "state", 64, type="json", persistent=True)
    await worker.block_watch("demo", "state", changes.put_nowait)
    first = await asyncio.wait_for(changes.get(), 5)
    check(first["event"] == "synced" and first["version"] == 0, "a watch synced", first)
    v = await other.block_write("demo", "state", document={"n": 1})
    ev = await asyncio.wait_for(changes.get(), 5)
    check(ev["event"] == "changed" and ev["version"] == v, "a watched change", ev)
    await worker.block_create("demo", "scratch", 8)
    await worker.block_watch("demo", "scratch", scratch.put_nowait)

    # Another connection takes the app id over: the first is told, and does not come back.
    gone = once(other, "disconnected")
    taker = await latzero.connect("py-other", pools=["demo"], takeover=True, **opts)
    d = await gone
    check(d["reconnecting"] is False and "DUPLICATE_APP" in d["reason"], "taken over", d)
    # A request after it says why the connection is gone.
    try:
        await other.emit("demo", "nobody-listens")
        raise AssertionError("an emit on a taken-over client was sent")
    except latzero.LatZeroError as e:
        check(e.code == "DISCONNECTED" and e.sent is False and "DUPLICATE_APP" in e.message and "does not reconnect" in e.message,
              "a request after a takeover says why", str(e))
    await taker.close()

    # The server restarts: the worker reconnects with its pools, handlers and presence. The
    # lease it holds ends with the connection, and it is told; the one it released is not.
    await worker.block_create("demo", "held", 8)
    await worker.block_lock("demo", "held", lease=60)
    await worker.block_create("demo", "freed", 8)
    await worker.block_lock("demo", "freed", lease=60)
    await worker.block_unlock("demo", "freed")
    leases_told = []
    worker.on("lock_expired", leases_told.append)
    await worker.subscribe_presence("demo")
    lost = once(worker, "disconnected")
    back = once(worker, "reconnected")
    print("restart", flush=True)
    check((await lost)["reconnecting"] is True, "disconnected, reconnecting")
    check([(d["block_id"], "connection" in d["reason"]) for d in leases_told] == [("held", True)],
          "a lease lost with the connection is told", leases_told)
    await back
    await worker.emit("demo", "nobody-listens")  # a round trip: the subscription asked again is in
    # (The CLI worker coming back after the restart may be told first.)
    arrived = once(worker, "presence", which=lambda d: d["app_id"] == "py-again")
    again = await latzero.connect("py-again", pools=["demo"], **opts)
    p = await arrived
    check(p["app_id"] == "py-again" and p["joined"] is True, "presence after the reconnect", p)
    # Unsubscribed: an app joining after that is not told of. (Its join is done when its
    # connect returns, so a presence event would come before the answer to the round trip after.)
    await worker.unsubscribe_presence("demo")
    joins = []
    worker.on("presence", lambda d: joins.append(d["app_id"]))
    late = await latzero.connect("py-late", pools=["demo"], **opts)
    await worker.emit("demo", "nobody-listens")  # a round trip
    check("py-late" not in joins, "no presence after unsubscribing", joins)
    await late.close()
    check(await again.call("demo", "greet", "bob") == "hello bob from py-again", "reconnected with its handlers")

    async def until(queue, pred):
        while True:
            ev = await asyncio.wait_for(queue.get(), 10)
            if pred(ev):
                return ev

    v = await again.block_write("demo", "state", document={"n": 2})
    await until(changes, lambda ev: ev["event"] == "changed" and ev["version"] == v)
    check(True, "the watch resumed after the reconnect")
    ev = await until(scratch, lambda ev: ev["event"] not in ("synced", "changed"))
    check(ev["event"] == "deleted", "a watch whose block went with the server ends", ev)
    await worker.block_unwatch("demo", "state")
    await worker.block_delete("demo", "state")
    await again.close()
    await worker.close()
    print("done", flush=True)


try:
    asyncio.run(main())
except Exception:
    print("FAIL " + traceback.format_exc().replace("\n", " | "), flush=True)
    sys.exit(1)
