#!/usr/bin/env python3
"""The floor under any serial request on this machine: one TCP round trip
over loopback between two processes, sent open loop at a fixed rate (as
herald-bench's W3), with no work on either side.

    python3 bench/loopback-rtt.py [rate_per_s] [seconds]

Prints p50/p99 of the round trip in microseconds. BENCHMARKS.md compares it
with the W3 D2 aim (p50 within 1.5x of one fdatasync).
"""
import os
import socket
import sys
import time


def main() -> None:
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 400.0
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    if os.fork() == 0:  # the echo server, a separate process
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(64):
            conn.sendall(data)
        os._exit(0)
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    interval = 1.0 / rate
    start = time.perf_counter()
    samples = []
    n = 0
    while True:
        scheduled = start + n * interval
        if scheduled - start > seconds:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.sendall(b"x")
        client.recv(64)
        samples.append((time.perf_counter() - scheduled) * 1e6)
        n += 1
    client.close()
    os.wait()
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    print(f"loopback round trip, open loop at {rate:.0f}/s, {len(samples)} samples: "
          f"p50 {pick(0.5):.0f} us, p99 {pick(0.99):.0f} us")


if __name__ == "__main__":
    main()
