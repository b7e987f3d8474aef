#!/usr/bin/env python3
"""Opens N keep-alive TLS connections to 127.0.0.1:PORT, sends one GET on each (so the server
has really served a request and holds an HTTP/1.1 keep-alive connection, not a half-open
handshake), prints `READY <open> <failed>` and holds them all idle for --hold seconds.

Used by bench/proxy.sh to read a server's memory with 1,000 open connections.
"""
import argparse
import asyncio
import ssl
import sys
import time


async def one(host, port, path, ctx, sem, conns, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost"), 10)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await asyncio.wait_for(reader.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n")[0].decode(errors="replace"))
            conns.append(writer)
        except Exception as e:  # noqa: BLE001 - count, report the first few, carry on
            failures.append(repr(e))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=8)
    ap.add_argument("--path", default="/")
    ap.add_argument("--parallel", type=int, default=50, help="handshakes in flight at once")
    a = ap.parse_args()
    if not a.host.startswith("127."):
        sys.exit("conns.py: loopback targets only")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sem = asyncio.Semaphore(a.parallel)
    conns, failures = [], []
    t0 = time.monotonic()
    await asyncio.gather(*(one(a.host, a.port, a.path, ctx, sem, conns, failures) for _ in range(a.n)))
    print(f"READY {len(conns)} {len(failures)} {time.monotonic() - t0:.1f}s", flush=True)
    for f in failures[:3]:
        print(f"# failure: {f}", file=sys.stderr)
    await asyncio.sleep(a.hold)
    for w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
