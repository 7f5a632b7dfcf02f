"""End-to-end test of the Python client's encrypted pools against a real server and a Rust SDK
app in the same pool, run by crates/latzero-cli/tests/python.rs. That test makes the pool with
`latzero keys generate vault`, and its Rust app (`rs-worker`, crates/latzero-cli/tests/sealed/
mod.rs) serves `rs_upper`, has written a sealed document into block `rs-doc` and two sealed
records into stream `rs-log`. When this prints `ready` the Rust app checks what this wrote and
calls `peer_done`; when it prints `restart` the test restarts the server. Prints `ok NAME` per check and `done` at the end; any failure
exits 1 with the reason.

    LATZERO_SOCKET=/path/to/latzero.sock LATZERO_KEYS="lzk1.sigil... lzk1.cipher... lzk1.seal..." \
        python3 clients/python/test_encrypted.py
"""

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import latzero  # noqa: E402
from checking import check, raises  # noqa: E402

SOCKET = os.environ["LATZERO_SOCKET"]
KEYS = os.environ["LATZERO_KEYS"].split()


async def main():
    opts = dict(socket=SOCKET, timeout=5.0, backoff_min=0.02, backoff_max=0.2)
    py = await latzero.connect("py-app", **opts)
    # The keys as `latzero keys generate` printed them, as a keys file holds them.
    from_text = latzero.PoolKeys.from_text("vault", os.environ["LATZERO_KEYS_TEXT"])
    check(repr(from_text) == repr(latzero.PoolKeys("vault", KEYS)), "a keys file's text reads", repr(from_text))
    vault = await py.encrypted_pool("vault", from_text)
    check("vault" not in py.pools, "joined by proving the SigilKey, not by a handshake", py.pools)

    # Python seals, Rust opens and answers sealed, Python opens.
    got = await vault.call("rs_upper", {"text": "héllo"})
    check(got == {"upper": "HÉLLO", "by": "rust"}, "a Rust handler answers a sealed call", got)
    e = await raises(vault.call("rs_upper", {"fail": True}))
    check(e.code == "HANDLER_ERROR" and e.error == {"message": "account 7 is short by 1200"},
          "a Rust handler's sealed error opens", (e.code, e.error))
    # On the wire the error is a sealed record: the server never saw its text.
    raw = await raises(py.call("vault", "rs_upper", vault._seal_value("msg/rs_upper", {"fail": True})))
    check(list(raw.error) == ["sealed"] and "1200" not in str(raw.error), "the error crossed the server sealed",
          raw.error)
    e = await raises(py.call("vault", "rs_upper", {"text": "plain"}))
    check(e.code == "PERMISSION_DENIED", "the server refuses a plaintext call", str(e))
    # A sealed broadcast: the Rust handler's answer, and its sealed error, opened.
    replies = await vault.broadcast("rs_upper", {"text": "ok"})
    check(replies == [{"app_id": "rs-worker", "response": {"upper": "OK", "by": "rust"}}],
          "a sealed broadcast's answer opens", replies)
    replies = await vault.broadcast("rs_upper", {"fail": True})
    e = replies[0].get("error") if len(replies) == 1 else None
    check(isinstance(e, latzero.LatZeroError) and e.code == "HANDLER_ERROR"
          and e.error == {"message": "account 7 is short by 1200"}, "a sealed broadcast's error opens", replies)

    doc, _ = await vault.read_json("rs-doc")
    check(doc == {"from": "rust", "n": 1}, "reads a document Rust sealed", doc)
    # The same through a mapping: no read goes through the server (it would fail here).
    mapped = await py.block_attach("vault", "rs-doc")
    check(mapped.mapped, "the sealed block maps", mapped.why_not_mapped)
    through_server, py.block_read = py.block_read, None
    try:
        doc, _ = await vault.read_json(mapped)
    finally:
        py.block_read = through_server
    check(doc == {"from": "rust", "n": 1}, "reads a document Rust sealed in place", doc)
    elsewhere = latzero.Block(py, {"pool": "other", "block_id": "rs-doc"}, None, 4096)
    e = await raises(vault.read_block(elsewhere))
    check(e.code == "INVALID_OPTIONS" and "other/rs-doc" in e.message, "a block of another pool is refused", str(e))
    r = await vault.consume("rs-log", "py")
    check(r["records"] == [b"rust 0", b"rust 1"], "opens stream records Rust sealed", r)

    # What the Rust app checks at `ready`.
    done = asyncio.get_running_loop().create_future()
    notes = []

    async def peer_sum(req):
        if not req.data["xs"]:
            raise latzero.HandlerError({"message": "nothing to add", "code": 42})
        return {"sum": sum(req.data["xs"]), "by": "python", "from": req.origin}

    await vault.handle("peer_sum", peer_sum)
    await vault.handle("peer_note", lambda req: notes.append(req.data))
    await vault.handle("peer_done", lambda req: done.done() or done.set_result(req.data))
    await py.block_create("vault", "peer-doc", 1024)
    await vault.write_json("peer-doc", {"from": "python", "draft": True})
    # Sealed and written in place (the Rust app and the reader below open it).
    doc_block = await py.block_attach("vault", "peer-doc", write=True)
    check(doc_block.writable, "the sealed block is writable in place", doc_block.why_not_writable)
    version = await vault.write_json(doc_block, {"from": "python", "list": [1, 2]})
    check(version == 2, "the write in place is the block's second version", version)
    doc_block.close()
    index, _ = await vault.append("rs-log", b"python 0")
    check(index == 2, "appends a sealed record after Rust's", index)

    # Keys: a reader reads and cannot write; a wrong SigilKey cannot join; bad text is named,
    # never echoed.
    reader_client = await latzero.connect("py-reader", **opts)
    reader = await reader_client.encrypted_pool("vault", latzero.PoolKeys("vault", KEYS[:2]))
    doc, _ = await reader.read_json("peer-doc")
    check(doc == {"from": "python", "list": [1, 2]}, "a reader with the CipherShard reads", doc)
    e = await raises(reader.call("rs_upper", {"text": "x"}))
    check(e.code == "CRYPTO" and "OblivionSeal" in e.message, "a reader cannot seal", str(e))
    e = await raises(reader.write_json("peer-doc", {"forged": True}))
    check(e.code == "CRYPTO", "nor write a block", str(e))
    wrong = "lzk1.sigil.1." + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    stranger = await latzero.connect("py-stranger", **opts)
    e = await raises(stranger.encrypted_pool("vault", [wrong] + KEYS[1:]))
    check(e.code == "PERMISSION_DENIED", "a wrong SigilKey does not join", str(e))
    secret = KEYS[0].rsplit(".", 1)[1]
    for text in (KEYS[0] + ".", KEYS[0] + " " + KEYS[1], KEYS[0][:-1] + "!"):
        e = await raises(stranger.encrypted_pool("vault", [text]))
        check(e.code == "INVALID_OPTIONS" and secret not in str(e) and "<redacted>" in str(e),
              f"bad key text {len(text)} is refused without the key", str(e))
    e = await raises(stranger.encrypted_pool("vault", latzero.PoolKeys("other", KEYS)))
    check(e.code == "INVALID_OPTIONS", "keys of another pool are refused", str(e))
    check(secret not in repr(vault._keys), "repr shows no key", repr(vault._keys))
    # Written through the server unsealed, or sealed and altered: refused there.
    e = await raises(py.block_write("vault", "peer-doc", b"\x00\x00\x00\x05hello"))
    check(e.code == "PERMISSION_DENIED", "the server refuses an unsealed block write", str(e))
    sealed = bytearray(latzero._seal(vault._keys, "block/peer-doc", b"x"))
    sealed[40] ^= 1
    e = await raises(py.block_write("vault", "peer-doc", len(sealed).to_bytes(4, "big") + bytes(sealed)))
    check(e.code == "PERMISSION_DENIED", "and an altered one", str(e))
    # A record a reader opened once is not taken again (a replayed message).
    msg = vault._seal_value("msg/x", 1)
    vault._open_message("msg/x", msg)
    e = await raises(_opening(vault, "msg/x", msg))
    check(e.code == "CRYPTO" and "already delivered" in e.message, "a message opens once", str(e))

    print("ready", flush=True)
    checked = await asyncio.wait_for(done, 30)
    check(checked == {"checked": 5}, "the Rust app opened what Python sealed", checked)
    check(notes == [{"note": "from rust"}], "an emit from Rust opens", notes)

    # After a restart the handle proves the key again before its next operation.
    reconnected = asyncio.get_running_loop().create_future()
    py.on("reconnected", lambda d: reconnected.done() or reconnected.set_result(d))
    print("restart", flush=True)
    await asyncio.wait_for(reconnected, 30)
    doc, _ = await vault.read_json("rs-doc")
    check(doc == {"from": "rust", "n": 1}, "re-joined after the server restarted", doc)

    # A stream append the server finds sealed before the stream's newest (another writer's
    # landed first) is sealed again and sent again, each time with a later seq, up to 8 tries.
    appends = []
    write_verifier = base64.b64encode(vault._keys.write_verifier(1)).decode()

    def stale(req, body):
        if req["action"] == "pool_challenge":
            return challenge(req, write_verifier)
        if req["action"] != "block_write":
            return {"action": "ack", "in_reply_to": req["id"]}
        appends.append(int.from_bytes(body[8:16], "big"))
        if len(appends) == 3:
            return {"action": "block_written", "in_reply_to": req["id"], "index": 7, "version": 8}
        return {"action": "error", "in_reply_to": req["id"], "code": "STALE_RECORD",
                "message": "sealed before the stream's newest record"}

    async with stand_in("stale.sock", stale) as path:
        staler = await latzero.connect("py-stale", socket=path, reconnect=False)
        overtaken = await staler.encrypted_pool("vault", KEYS)
        got = await overtaken.append("s", b"again")
        check(got == (7, 8) and len(appends) == 3 and appends == sorted(set(appends)),
              "an append overtaken twice is sealed again and lands", (got, appends))
        e = await raises(overtaken.append("s", b"never"))
        check(e.code == "STALE_RECORD" and len(appends) == 3 + 8, "and gives up after 8 tries", (str(e), len(appends)))
        await staler.close()

    # A server that gives a write verifier other than our OblivionSeal's (one that would pass
    # forged records off as the pool's) is not trusted: refused before any proof is sent.
    asked = []

    def lying(req, _body):
        asked.append(req["action"])
        if req["action"] == "pool_challenge":
            return challenge(req, base64.b64encode(os.urandom(32)).decode())
        return {"action": "ack", "in_reply_to": req["id"]}

    async with stand_in("lying.sock", lying) as path:
        liar = await latzero.connect("py-liar", socket=path, reconnect=False)
        e = await raises(liar.encrypted_pool("vault", KEYS))
        check(e.code == "CRYPTO" and "does not match our OblivionSeal" in e.message and asked == ["pool_challenge"],
              "a server's false write verifier is refused before proving", (str(e), asked))
        await liar.close()

    # Without the cryptography package: a clear NOT_AVAILABLE, not an ImportError.
    probe = ("import sys; sys.modules['cryptography'] = None; sys.path.insert(0, sys.argv[1]); import latzero\n"
             "try:\n    latzero.PoolKeys('vault', sys.argv[2:])\n"
             "except latzero.LatZeroError as e:\n    print(e.code, e.message)")
    out = subprocess.run([sys.executable, "-c", probe, os.path.dirname(os.path.abspath(__file__)), *KEYS],
                         capture_output=True, text=True, timeout=30)
    check(out.stdout.startswith("NOT_AVAILABLE") and "cryptography" in out.stdout,
          "without the cryptography package it says so", (out.stdout, out.stderr))

    for c in (py, reader_client, stranger):
        await c.close()
    print("done", flush=True)


def challenge(req, write_verifier):
    """A stand-in's answer to pool_challenge for `vault`, generation 1, with this write verifier."""
    return {"action": "pool_challenge", "in_reply_to": req["id"], "pool": "vault", "generation": 1,
            "nonce": base64.b64encode(os.urandom(32)).decode(), "write_verifiers": {"1": write_verifier}}


@contextlib.asynccontextmanager
async def stand_in(name, answer):
    """A stand-in server on a Unix socket beside the real one's (its path is yielded): it takes
    the handshake, then answers each frame with `answer(message, body)` (`body`: a binary
    frame's bytes after its header, else None)."""
    async def serve(reader, writer):
        async def frame():
            head = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(head, "big"))
            if payload[:1] == b"\x00":
                n = int.from_bytes(payload[1:5], "big")
                return json.loads(payload[5:5 + n]), payload[5 + n:]
            return json.loads(payload), None

        def send(obj):
            data = json.dumps(obj).encode()
            writer.write(len(data).to_bytes(4, "big") + data)

        await frame()
        send({"action": "handshake_ack", "in_reply_to": 0, "pools": [], "triggers": []})
        try:
            while True:
                send(answer(*await frame()))
        except asyncio.IncompleteReadError:
            writer.close()

    path = os.path.join(os.path.dirname(SOCKET), name)
    server = await asyncio.start_unix_server(serve, path)
    try:
        yield path
    finally:
        server.close()


async def _opening(pool, ctx, data):
    pool._open_message(ctx, data)


try:
    asyncio.run(main())
except Exception:
    print("FAIL " + traceback.format_exc().replace("\n", " | "), flush=True)
    sys.exit(1)
