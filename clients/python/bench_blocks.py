"""Reads of a memory block from Python: in place through the mapping (`Block.read`), against
the same read through the server (`Client.block_read`), for a few sizes; and writes in place
(`Block.write` on a block attached for writing) against writes through the server
(`Client.block_write`). Needs a running
server; scripts/bench-python-blocks.sh starts one.

    python3 clients/python/bench_blocks.py /path/to/latzero.sock
"""

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import latzero  # noqa: E402


async def timed(n, read):
    for _ in range(min(n, 100)):
        await read()
    t = time.perf_counter()
    for _ in range(n):
        await read()
    return (time.perf_counter() - t) / n * 1e6


async def main(socket):
    lz = await latzero.connect("py-bench", socket=socket, pools=["bench"], ephemeral=True)
    print("| block size | mapped read µs | read through the server µs | server ÷ mapped | mapped write µs | write through the server µs |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, n in ((64, 20000), (4096, 20000), (65536, 5000), (1 << 20, 500)):
        await lz.block_create("bench", "b", size)
        await lz.block_write("bench", "b", b"\x07" * size)
        block = await lz.block_attach("bench", "b", write=True)
        if not block.writable:
            raise SystemExit(f"not mapped for writing: {block.why_not_writable}")
        mapped = await timed(n, block.read)
        served = await timed(n, lambda: lz.block_read("bench", "b"))
        data = b"\x05" * size
        in_place = await timed(n, lambda: block.write(0, data))
        written = await timed(n, lambda: lz.block_write("bench", "b", data))
        print(f"| {size} | {mapped:.2f} | {served:.1f} | {served / mapped:.0f} | {in_place:.2f} | {written:.1f} |")
        block.close()
        await lz.block_delete("bench", "b")
    await lz.close()


asyncio.run(main(sys.argv[1]))
