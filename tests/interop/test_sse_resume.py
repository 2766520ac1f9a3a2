"""SSE with httpx-sse: a subscriber that drops its connection and comes back
with `Last-Event-ID` (the `id:` of the last event it handled) resumes
exactly there: nothing lost, nothing twice (README "Subscribe: SSE and
WebSocket")."""

from __future__ import annotations

import json
from typing import Iterator

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from herald_support import Client, HeraldServer


def publish_numbered(client: Client, topic: str, numbers: range, **attributes) -> None:
    """Events `n-<number>`, spread over the partitions by key."""
    client.publish_batch(topic, [
        {"specversion": "1.0", "id": f"n-{number}", "source": "/interop/sse",
         "type": "com.example.numbered", "key": f"k-{number % 5}",
         "data": {"n": number}, **attributes}
        for number in numbers
    ])


def take(events: Iterator[ServerSentEvent], count: int) -> list[ServerSentEvent]:
    taken = []
    for sse in events:
        assert sse.event == "message", (sse.event, sse.data)
        taken.append(sse)
        if len(taken) == count:
            break
    assert len(taken) == count
    return taken


def test_given_last_event_id_when_reconnecting_should_resume_without_loss_or_repeat(
        herald: HeraldServer, client: Client):
    topic = client.create_topic(partitions=3, prefix="sse-resume")
    publish_numbered(client, topic, range(0, 20))
    url = f"/v1/topics/{topic}/events/stream"
    with httpx.Client(base_url=herald.base_url, timeout=10) as http:
        # First connection: 7 of the 20, then the client goes away.
        with connect_sse(http, "GET", url, params={"from": "earliest"}) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            first = take(source.iter_sse(), 7)
        last_id = first[-1].id
        assert last_id, "an SSE event without an id cannot be resumed"

        # Meanwhile 10 more are published.
        publish_numbered(client, topic, range(20, 30))
        # Back with Last-Event-ID (and a `from` it must win over), the 23
        # others, then a sentinel published after them: if anything came
        # twice, the sentinel would not be 24th.
        with connect_sse(http, "GET", url, params={"from": "earliest"},
                         headers={"Last-Event-ID": last_id}) as source:
            events = source.iter_sse()
            second = take(events, 23)
            publish_numbered(client, topic, range(999, 1000))
            [sentinel] = take(events, 1)

    ids = [json.loads(sse.data)["id"] for sse in first + second]
    assert len(ids) == len(set(ids)), f"delivered twice: {sorted(ids)}"
    assert sorted(ids) == sorted(f"n-{number}" for number in range(30))
    assert json.loads(sentinel.data)["id"] == "n-999"
    # Within a partition, events come in offset order across the reconnect.
    by_partition: dict[int, list[int]] = {}
    for sse in first + second:
        event = json.loads(sse.data)
        by_partition.setdefault(event["partition"], []).append(event["offset"])
    for offsets in by_partition.values():
        assert offsets == sorted(offsets)


def test_given_type_filter_when_resuming_should_skip_nothing_that_matches(
        herald: HeraldServer, client: Client):
    """A filtered subscription's ids resume past the events it skipped, too."""
    topic = client.create_topic(partitions=2, prefix="sse-filter")
    publish_numbered(client, topic, range(0, 10), type="com.example.wanted")
    publish_numbered(client, topic, range(10, 20), type="com.example.other")
    publish_numbered(client, topic, range(20, 30), type="com.example.wanted")
    url = f"/v1/topics/{topic}/events/stream"
    params = {"from": "earliest", "type": "com.example.wanted"}
    with httpx.Client(base_url=herald.base_url, timeout=10) as http:
        with connect_sse(http, "GET", url, params=params) as source:
            first = take(source.iter_sse(), 12)
        with connect_sse(http, "GET", url, params=params,
                         headers={"Last-Event-ID": first[-1].id}) as source:
            second = take(source.iter_sse(), 8)
    events = [json.loads(sse.data) for sse in first + second]
    assert all(event["type"] == "com.example.wanted" for event in events)
    assert sorted(event["id"] for event in events) == sorted(
        f"n-{number}" for number in [*range(0, 10), *range(20, 30)])
