#!/usr/bin/env python3
"""Times lineage queries with a million unrelated events stored.

Starts `target/release/herald serve` on a fresh data directory, publishes
N unrelated events (no correlationid or causationid) in batches of 1,000,
then a causal chain over three topics (an order, its payment, a receipt;
one correlation id), with a consumer group on the orders. Reports how long
the index took to take in the chain after the bulk (it reads every event
once), the server's CPU for the bulk, then times each query form many
times (median and p99 of the whole HTTP round trip).

Usage: bench/lineage.py [events] [queries]   (defaults 1000000, 200)
Environment: HERALD_BIN (default target/release/herald), BENCH_TMP (where
the data directory goes, default /tmp).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

EVENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
QUERIES = int(sys.argv[2]) if len(sys.argv) > 2 else 200
BIN = os.environ.get("HERALD_BIN", "target/release/herald")


def call(base, method, path, body=None, content_type="application/json"):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("content-type", content_type)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(base, path, count):
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        answer = call(base, "GET", path)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return statistics.median(samples), p99, len(answer["nodes"])


def main():
    data_dir = tempfile.mkdtemp(prefix="herald-lineage-", dir=os.environ.get("BENCH_TMP", "/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update({"HERALD_DATA_DIR": data_dir, "HERALD_LISTEN": "127.0.0.1:0", "HERALD_LOG__LEVEL": "warn"})
    server = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        base = "http://" + line.strip().rsplit(" ", 1)[1]
        while True:
            try:
                urllib.request.urlopen(base + "/readyz", timeout=5)
                break
            except Exception:
                time.sleep(0.05)
        call(base, "POST", "/v1/topics", {"name": "noise", "partitions": 4})
        for topic in ("orders", "payments", "receipts"):
            call(base, "POST", "/v1/topics", {"name": topic, "partitions": 2})
        call(base, "PUT", "/v1/topics/orders/groups/billing", {"mode": "queue"})

        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        batch = 1_000
        for first in range(0, EVENTS, batch):
            events = [
                {"specversion": "1.0", "id": f"n-{n}", "source": "/bench", "type": "noise",
                 "data": {"n": n}}
                for n in range(first, min(first + batch, EVENTS))
            ]
            call(base, "POST", "/v1/topics/noise/events", json.dumps(events).encode(),
                 "application/cloudevents-batch+json")
        published = time.perf_counter() - started

        chain = [
            ("orders", {"id": "o-1", "type": "order.placed"}),
            ("payments", {"id": "p-1", "type": "payment.taken", "causationid": "o-1"}),
            ("receipts", {"id": "r-1", "type": "receipt.sent", "causationid": "p-1"}),
        ]
        for topic, event in chain:
            event.update({"specversion": "1.0", "source": "/shop", "correlationid": "c-1"})
            call(base, "POST", f"/v1/topics/{topic}/events", json.dumps([event]).encode(),
                 "application/cloudevents-batch+json")
        chained = time.perf_counter()
        while len(call(base, "GET", "/v1/lineage?correlationid=c-1")["nodes"]) < 4:
            time.sleep(0.01)
        indexed = time.perf_counter() - chained
        cpu = cpu_seconds(server.pid) - cpu_before

        order = call(base, "GET", "/v1/lineage?correlationid=c-1")["nodes"][0]
        forms = [
            ("correlationid=c-1", "/v1/lineage?correlationid=c-1"),
            ("causationid=o-1", "/v1/lineage?causationid=o-1"),
            ("topic/partition/offset of o-1",
             f"/v1/lineage?topic=orders&partition={order['partition']}&offset={order['offset']}"),
            ("correlationid=unknown", "/v1/lineage?correlationid=unknown"),
        ]
        print(f"events stored: {EVENTS:,} unrelated + 3 in a chain; "
              f"bulk publish {published:.1f} s ({EVENTS / published:,.0f} events/s, 1,000 per request)")
        print(f"chain in the index {indexed * 1000:.0f} ms after it was published "
              f"(the indexer read the bulk meanwhile); server CPU for bulk and index {cpu:.1f} s")
        print(f"{'query':<34} {'nodes':>5} {'median ms':>10} {'p99 ms':>8}")
        for name, path in forms:
            median, p99, nodes = timed(base, path, QUERIES)
            print(f"{name:<34} {nodes:>5} {median:>10.2f} {p99:>8.2f}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run(["rm", "-rf", data_dir], check=False)


if __name__ == "__main__":
    main()
