"""Calls from Python, side by side: this client against a LatZero server (its Unix socket and
its TCP port) and nats-py against nats-server, the same workload on each. A caller and an echo
handler run as two clients in this one process, on one event loop, as in the Rust race
(crates/latzero-bench). scripts/bench-python.sh starts both servers and runs this.

    python3 clients/python/bench_rpc.py --socket S --tcp HOST:PORT --nats nats://HOST:PORT

Sequential calls (64-byte payloads; p50 and p99 µs after warm-up), then pipelined calls
(64 in flight: 64 coroutines calling in turn; calls/s), then events fanned out to 4 receivers
(fire-and-forget `emit(..., confirm=False)` against NATS `publish`; events/s until every
receiver has them all) — the rates the median of the rounds, each round run in turn across
the peers. The payload is 64 bytes on the wire for both: a JSON string for LatZero, whose
payloads are JSON, raw bytes for NATS.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import latzero  # noqa: E402


class LatZeroPeer:
    def __init__(self, name, **where):
        self.name = name
        self.where = where
        self.data = "x" * 62  # 64 bytes as JSON text

    async def start(self):
        opts = dict(pools=["bench"], ephemeral=True, **self.where)
        tag = self.name.split()[-1]
        self.handler = await latzero.connect(f"py-bench-{tag}-h", **opts)
        await self.handler.handle("echo", lambda req: req.data)
        self.caller = await latzero.connect(f"py-bench-{tag}-c", **opts)

    async def call(self):
        return await self.caller.call("bench", "echo", self.data)

    async def receiver(self, i, on_event):
        c = await latzero.connect(f"py-bench-{self.name.split()[-1]}-rx{i}", pools=["bench"], ephemeral=True, **self.where)
        await c.handle("ev", lambda _req: on_event())
        return c

    async def publish(self):
        await self.caller.emit("bench", "ev", self.data, confirm=False)

    async def flush(self):
        pass

    async def stop(self):
        await self.caller.close()
        await self.handler.close()


class NatsPeer:
    name = "NATS"

    def __init__(self, url):
        self.url = url
        self.data = b"x" * 64

    async def start(self):
        import nats  # scripts/bench-python.sh installs nats-py into target/py

        self.handler = await nats.connect(self.url)

        async def echo(msg):
            await msg.respond(msg.data)

        await self.handler.subscribe("echo", cb=echo)
        await self.handler.flush()
        self.caller = await nats.connect(self.url)

    async def call(self):
        return (await self.caller.request("echo", self.data, timeout=30)).data

    async def receiver(self, _i, on_event):
        import nats

        async def count(_msg):
            on_event()

        c = await nats.connect(self.url, pending_size=64 << 20)
        await c.subscribe("ev", cb=count, pending_msgs_limit=1 << 20)
        await c.flush()
        return c

    async def publish(self):
        await self.caller.publish("ev", self.data)

    async def flush(self):
        await self.caller.flush()

    async def stop(self):
        await self.caller.close()
        await self.handler.close()


async def sequential(peer, n, warmup):
    for _ in range(warmup):
        await peer.call()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await peer.call()
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[len(lat) // 2] * 1e6, lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1e6


async def pipelined(peer, n, inflight):
    per = n // inflight

    async def worker():
        for _ in range(per):
            await peer.call()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return per * inflight / (time.perf_counter() - t)


async def fanout(peer, n, receivers):
    """`n` events to `receivers` receiving clients; events/s until every one has them all."""
    done = asyncio.get_running_loop().create_future()
    got = [0] * receivers

    def counter(i):
        def count():
            got[i] += 1
            if got[i] == n and all(g == n for g in got) and not done.done():
                done.set_result(None)
        return count

    clients = [await peer.receiver(i, counter(i)) for i in range(receivers)]
    t = time.perf_counter()
    for _ in range(n):
        await peer.publish()
    await peer.flush()
    await asyncio.wait_for(done, 120)
    rate = n / (time.perf_counter() - t)
    for c in clients:
        await c.close()
    return rate


async def main(args):
    peers = [NatsPeer(args.nats), LatZeroPeer("LatZero unix", socket=args.socket)]
    host, port = args.tcp.rsplit(":", 1)
    peers.append(LatZeroPeer("LatZero tcp", host=host, port=int(port)))
    for p in peers:
        await p.start()
    seq = {}
    for p in peers:
        seq[p.name] = await sequential(p, args.seq, args.warmup)
    rounds = {p.name: [] for p in peers}
    fan_rounds = {p.name: [] for p in peers}
    for _ in range(args.rounds):
        for p in peers:
            rounds[p.name].append(await pipelined(p, args.pipelined, args.inflight))
            fan_rounds[p.name].append(await fanout(p, args.fanout, 4))
    for p in peers:
        await p.stop()

    rate = {name: statistics.median(r) for name, r in rounds.items()}
    fan = {name: statistics.median(r) for name, r in fan_rounds.items()}
    names = [p.name for p in peers]
    nats = "NATS"
    print(f"| workload | {' | '.join(names)} | unix ÷ NATS | tcp ÷ NATS |")
    print(f"|---|{'---:|' * (len(names) + 2)}")
    for label, pick, fmt in (
        ("seq 64 B p50 µs", lambda n: seq[n][0], "{:.1f}"),
        ("seq 64 B p99 µs", lambda n: seq[n][1], "{:.1f}"),
        ("pipelined calls/s", lambda n: rate[n], "{:.0f}"),
        ("fan-out ×4 events/s", lambda n: fan[n], "{:.0f}"),
    ):
        cells = [fmt.format(pick(n)) for n in names]
        ratios = [f"{pick(n) / pick(nats):.2f}" for n in ("LatZero unix", "LatZero tcp")]
        print(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    print()
    print("Rounds, in the order run (pipelined calls/s; fan-out events/s):")
    print()
    for n in names:
        print(f"- {n}: {' · '.join(f'{r / 1000:.1f}k' for r in rounds[n])}; "
              f"{' · '.join(f'{r / 1000:.1f}k' for r in fan_rounds[n])}")


if __name__ == "__main__":
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--socket", required=True, help="the LatZero server's Unix socket")
    a.add_argument("--tcp", required=True, help="the LatZero server's TCP HOST:PORT")
    a.add_argument("--nats", required=True, help="nats-server's URL")
    a.add_argument("--seq", type=int, default=5000, help="sequential calls (default 5000)")
    a.add_argument("--warmup", type=int, default=500, help="warm-up calls first (default 500)")
    a.add_argument("--pipelined", type=int, default=50000, help="pipelined calls per round (default 50000)")
    a.add_argument("--inflight", type=int, default=64, help="calls in flight (default 64)")
    a.add_argument("--fanout", type=int, default=50000, help="events fanned out per round (default 50000)")
    a.add_argument("--rounds", type=int, default=3, help="rounds of the rates (default 3)")
    asyncio.run(main(a.parse_args()))
