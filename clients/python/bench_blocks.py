"""Reads of a memory block from Python: in place through the mapping (`Block.read`), against
the same read through the server (`Client.block_read`), for a few sizes; and writes in place
(`Block.write` on a block attached for writing) against writes through the server
(`Client.block_write`). With a keys file of an encrypted pool `vault`: its sealed records read
(`EncryptedPool.read_block`) by block id, through the server, against through a mapped `Block`.
Needs a running server; scripts/bench-python-blocks.sh starts one and makes the pool.

    python3 clients/python/bench_blocks.py /path/to/latzero.sock [/path/to/vault.keys]
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


async def main(socket, keys):
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
    if keys:
        vault = await lz.encrypted_pool("vault", latzero.PoolKeys.from_file("vault", keys))
        print()
        print("| sealed record | read_block through the server µs | read_block mapped µs | server ÷ mapped |")
        print("|---:|---:|---:|---:|")
        for size, n in ((64, 3000), (4096, 3000), (65536, 1000)):
            # Room for the record: its length, nonce, tag and signature beside the plaintext.
            await lz.block_create("vault", "s", size + 4 + 28 + 16 + 64)
            await vault.write_block("s", b"\x07" * size)
            block = await lz.block_attach("vault", "s")
            if not block.mapped:
                raise SystemExit(f"not mapped: {block.why_not_mapped}")
            served = await timed(n, lambda: vault.read_block("s"))
            mapped = await timed(n, lambda: vault.read_block(block))
            print(f"| {size} | {served:.1f} | {mapped:.1f} | {served / mapped:.1f} |")
            block.close()
            await lz.block_delete("vault", "s")
    await lz.close()


asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
