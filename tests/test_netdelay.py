"""benchmarks/netdelay.py, the delay proxy of the network-filesystem benchmark: it adds the
delay it is told to, in each direction, as a delay line (not one chunk per delay), and
delivers every byte in order."""
import asyncio
import importlib.util
import os
import time
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(  # by path: benchmarks/ is not on sys.path
    "netdelay", Path(__file__).resolve().parents[1] / "benchmarks" / "netdelay.py")
netdelay = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(netdelay)

DELAY_MS = 40


async def _echo(reader, writer):
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trip(port: int, payload: bytes) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    assert await reader.readexactly(len(payload)) == payload
    seconds = time.perf_counter() - began
    writer.close()
    return seconds


async def _measure() -> dict:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    started = asyncio.Event()
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    proxy_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    proxy = asyncio.create_task(netdelay.serve(("127.0.0.1", proxy_port),
                                               ("127.0.0.1", echo_port), DELAY_MS, started))
    await started.wait()
    direct = min([await _round_trip(echo_port, b"x") for _ in range(3)])
    delayed = min([await _round_trip(proxy_port, b"x") for _ in range(3)])
    blob = os.urandom(3 << 20)  # many chunks: order and content kept
    await _round_trip(proxy_port, blob)
    # ten separate chunks 10 ms apart: a delay line returns the last ~2 x delay after it
    # was sent; a proxy serving one chunk per delay would take >= 10 x delay per direction
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    began = time.perf_counter()
    for i in range(10):
        writer.write(bytes([i]) * 100)
        await writer.drain()
        await asyncio.sleep(0.01)
    assert await reader.readexactly(1000) == b"".join(bytes([i]) * 100 for i in range(10))
    burst = time.perf_counter() - began
    writer.close()
    proxy.cancel()
    echo.close()
    return {"direct": direct, "delayed": delayed, "burst": burst}


def test_proxy_adds_the_delay_each_way_as_a_delay_line():
    t = asyncio.run(_measure())
    delay = DELAY_MS / 1000
    assert t["delayed"] >= 2 * delay, t  # one delay each way
    assert t["delayed"] - t["direct"] >= 2 * delay * 0.95, t
    assert t["delayed"] < 2 * delay + 0.1, t  # not more than asked (slack for a busy CI)
    # pipelined: one chunk per delay would take >= 10 x delay each way (0.8 s)
    assert t["burst"] < 10 * 0.01 + 2 * delay + 0.3, t
