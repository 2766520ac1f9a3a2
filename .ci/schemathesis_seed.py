"""Creates the resources schemathesis fuzzes against (.ci/schemathesis.sh).

Usage: python3 .ci/schemathesis_seed.py BASE_URL FIXTURES_JSON
(with HERALD_FUZZ_TOKEN, the bearer token, when the server has auth on)

Without existing resources nearly every generated path names nothing and the
server answers 404 before it looks at the rest of the request. This makes one
of each: a topic with events (and one for PATCH to change), a group of each
mode (one with a dead letter),
a stream with events and a snapshot, a blob, a queue with jobs (one with
parts), a webhook endpoint on the topic (its target is a closed port on
loopback, which the server is allowed to reach: every delivery fails and
is logged), and a "doomed" topic, group, stream and endpoint for the DELETE
operations (the others must survive the run). It writes their names and ids as JSON for
the hooks (.ci/schemathesis_hooks.py), which put them into most generated
path parameters.

The names differ from the examples in the document ("orders", "workers"…):
schemathesis's examples phase sends those as they are, DELETE included.

Every call must succeed: a fixture that cannot be made is a broken server,
and fuzzing without it would only measure 404s.
"""

import json
import os
import sys

import requests

TIMEOUT = 10


def call(method, url, expect, **kwargs):
    token = os.environ.get("HERALD_FUZZ_TOKEN")
    if token:
        kwargs["headers"] = {**kwargs.get("headers", {}), "authorization": f"Bearer {token}"}
    response = requests.request(method, url, timeout=TIMEOUT, **kwargs)
    if response.status_code != expect:
        sys.exit(
            f"schemathesis_seed: {method} {url} answered {response.status_code}, "
            f"expected {expect}: {response.text[:500]}"
        )
    return response.json() if response.content else None


def event(source, kind, **attributes):
    return {"specversion": "1.0", "source": source, "type": kind, **attributes}


def main(base, out):
    v1 = f"{base}/v1"
    topic = "fixture"
    call("POST", f"{v1}/topics", 201, json={"name": topic, "partitions": 2})
    call("POST", f"{v1}/topics", 201, json={"name": "doomed"})
    call("POST", f"{v1}/topics", 201, json={"name": "fixture-settings"})
    batch = [
        event("/shop", "order.placed", key=f"customer-{n % 3}", data={"total": n})
        for n in range(6)
    ]
    call(
        "POST",
        f"{v1}/topics/{topic}/events",
        201,
        data=json.dumps(batch),
        headers={"content-type": "application/cloudevents-batch+json"},
    )

    groups = {"queue": "fixture-queue", "keyed": "fixture-keyed", "stream": "fixture-stream"}
    for mode, group in groups.items():
        call("PUT", f"{v1}/topics/{topic}/groups/{group}", 201, json={"mode": mode})
    call("PUT", f"{v1}/topics/{topic}/groups/doomed", 201, json={"mode": "queue"})
    # One dead letter, so the dead-letter listing and redrive have one.
    fetched = call(
        "POST",
        f"{v1}/topics/{topic}/groups/fixture-queue/fetch",
        200,
        json={"member": "seed", "max": 1, "wait_ms": 1000},
    )
    delivery_ids = [d["delivery_id"] for d in fetched["deliveries"]]
    call(
        "POST",
        f"{v1}/topics/{topic}/groups/fixture-queue/reject",
        200,
        json={"delivery_ids": delivery_ids, "reason": "seeded dead letter"},
    )

    stream = "fixture-1"
    call(
        "POST",
        f"{v1}/topics/{topic}/streams/{stream}/events",
        201,
        json=[event("/shop", "order.created"), event("/pay", "payment.succeeded")],
    )
    call(
        "PUT",
        f"{v1}/topics/{topic}/streams/{stream}/snapshot",
        200,
        json={"version": 1, "state": {"paid": True}},
    )
    call(
        "POST",
        f"{v1}/topics/{topic}/streams/doomed/events",
        201,
        json=event("/shop", "order.created"),
    )

    blob = call("POST", f"{v1}/blobs", 201, data=b"herald fuzzing fixture\n")["id"]
    queue = "fixture"
    jobs = [
        call(
            "POST",
            f"{v1}/queues/{queue}/jobs",
            202,
            json={"blob": blob, "data": {"width": 128}},
        )["job_id"],
        call(
            "POST",
            f"{v1}/queues/{queue}/jobs",
            202,
            json={"parts": [{"key": "shard-0", "data": 1}, {"key": "shard-1", "data": 2}]},
        )["job_id"],
    ]

    def endpoint(description):
        return call(
            "POST",
            f"{v1}/webhooks/endpoints",
            201,
            json={
                "url": "http://127.0.0.1:9/hook",
                "description": description,
                "filter": {"topics": [topic]},
            },
        )["endpoint_id"]

    endpoints = {"endpoint": endpoint("fixture"), "doomed": endpoint("doomed")}

    fixtures = {
        "topic": topic,
        "endpoint": endpoints["endpoint"],
        "message": f"{topic}.0.0",
        "settings_topic": "fixture-settings",
        "groups": sorted(groups.values()),
        "stream_group": groups["stream"],
        "stream": stream,
        "blob": blob,
        "queue": queue,
        "jobs": jobs,
        "doomed": {
            "topic": "doomed",
            "group": "doomed",
            "stream": "doomed",
            "endpoint": endpoints["doomed"],
        },
    }
    with open(out, "w", encoding="utf-8") as file:
        json.dump(fixtures, file, indent=2)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1].rstrip("/"), sys.argv[2])
