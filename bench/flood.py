#!/usr/bin/env python3
"""Password-guessing flood for bench/auth.sh.

From each of --addrs source addresses (127.0.0.2, 127.0.0.3, ...), --conns keep-alive TLS
connections to 127.0.0.1:PORT send `GET /` with Basic credentials for a real user and a NEW
random wrong password on every request, as fast as the server answers, for --duration
seconds. A connection the server closes (or that fails) is reopened. Concurrency is bounded:
at most addrs x conns requests are in flight.

Prints one JSON line: requests answered, per second, by status, errors, reconnects, and the
CPU seconds this process itself used (it shares the machine with the server under test).
"""
import argparse
import asyncio
import base64
import collections
import ipaddress
import json
import os
import ssl
import sys
import time


async def worker(a, ip, ctx, deadline, stats):
    reader = writer = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            if writer is None:
                stats["connects"] += 1
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(a.host, a.port, ssl=ctx, server_hostname="localhost",
                                            local_addr=(ip, 0)), left)
            cred = base64.b64encode(f"{a.user}:wrong-{os.urandom(9).hex()}".encode()).decode()
            writer.write(f"GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {cred}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline - time.monotonic())
            lines = head.split(b"\r\n")
            status = lines[0].split(b" ")[1].decode()
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value == b"close":
                    close = True
                elif name == b"transfer-encoding":
                    close = True  # not worth parsing chunks: drop the connection instead
            if length and not close:
                await asyncio.wait_for(reader.readexactly(length), deadline - time.monotonic())
            stats["status"][status] += 1
            stats["requests"] += 1
            if close:
                writer.close()
                writer = None
        except asyncio.TimeoutError:
            break
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, IndexError, ValueError) as e:
            stats["errors"] += 1
            stats["error_kinds"][type(e).__name__] += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--user", default="bench")
    ap.add_argument("--first-ip", default="127.0.0.2")
    ap.add_argument("--addrs", type=int, default=32)
    ap.add_argument("--conns", type=int, default=4, help="connections per source address")
    ap.add_argument("--duration", type=float, default=15)
    a = ap.parse_args()
    first = ipaddress.IPv4Address(a.first_ip)
    ips = [str(first + i) for i in range(a.addrs)]
    for ip in ips + [a.host]:
        if not ipaddress.IPv4Address(ip).is_loopback:
            sys.exit(f"flood.py: loopback addresses only, not {ip}")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stats = {"requests": 0, "errors": 0, "connects": 0,
             "status": collections.Counter(), "error_kinds": collections.Counter()}
    t0 = time.monotonic()
    deadline = t0 + a.duration
    await asyncio.gather(*(worker(a, ip, ctx, deadline, stats) for ip in ips for _ in range(a.conns)))
    elapsed = time.monotonic() - t0
    stats["per_s"] = round(stats["requests"] / elapsed, 1)
    stats["seconds"] = round(elapsed, 1)
    stats["cpu_s"] = round(time.process_time(), 1)
    print(json.dumps(stats, sort_keys=True), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
