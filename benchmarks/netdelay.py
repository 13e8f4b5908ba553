"""A TCP forwarder that adds a one-way delay in each direction (a user-space stand-in for
``tc qdisc ... netem delay``, which this sandbox's kernel lacks; used by benchmarks/netfs.sh).

Every chunk read from one side is written to the other ``delay_ms`` after it arrived, in
order, and without waiting for the chunks before it to be delivered: a delay line, not a
queue served one chunk per delay, so a round trip costs 2 x delay and throughput is not
capped by it (as with netem; no bandwidth limit, no loss).

    python benchmarks/netdelay.py --listen 127.0.0.1:2222 --to 10.213.7.2:22 --delay-ms 5
"""
from __future__ import annotations

import argparse
import asyncio
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read."""
    line: asyncio.Queue = asyncio.Queue()

    async def deliver() -> None:
        while (item := await line.get()) is not None:
            due, chunk = item
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # the other side's half-close, passed on

    sender = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(1 << 16):
            line.put_nowait((time.monotonic() + delay, chunk))
    except OSError:  # a reset connection ends this direction
        pass
    finally:
        line.put_nowait(None)
        try:
            await sender
        except OSError:
            pass


async def serve(listen: tuple[str, int], target: tuple[str, int], delay_ms: float,
                started: asyncio.Event | None = None) -> None:
    """Forward every connection to ``listen`` to ``target`` until cancelled."""
    delay = delay_ms / 1000

    async def handle(client_r, client_w) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w, delay), _pipe(server_r, client_w, delay))
        for w in (client_w, server_w):
            w.close()

    server = await asyncio.start_server(handle, *listen)
    if started is not None:
        started.set()
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT")
    parser.add_argument("--to", type=_address, required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one way, each direction")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.listen, args.to, args.delay_ms))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
