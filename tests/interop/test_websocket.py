"""Consuming a group over a WebSocket with the `websockets` library, per the
documented protocol (README "Subscribe: SSE and WebSocket", docs/api.md):
deliveries come as `{"delivery": {delivery_id, attempt, event}}`, at most
`max` unsettled at once; settlements go as `{"ack": [ids]}` and are answered
with `{"ack": {"acked", "unknown"}}`; closing the socket returns the
member's leases at once."""

from __future__ import annotations

import json
from typing import Any

from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from herald_support import Client, HeraldServer, unique, wait_until


def publish(client: Client, topic: str, count: int) -> list[str]:
    results = client.publish_batch(topic, [
        {"specversion": "1.0", "id": f"job-{number}", "source": "/interop/ws",
         "type": "com.example.work", "key": f"k-{number % 7}", "data": {"n": number}}
        for number in range(count)
    ])
    return [result["id"] for result in results]


def group_socket(herald: HeraldServer, topic: str, group: str, member: str,
                 max_unsettled: int) -> ClientConnection:
    return ws_connect(
        f"{herald.ws_url}/v1/topics/{topic}/groups/{group}/ws?member={member}&max={max_unsettled}",
        open_timeout=10)


def receive(socket: ClientConnection) -> dict[str, Any]:
    message = json.loads(socket.recv(timeout=10))
    assert "error" not in message, message
    return message


def test_given_group_socket_when_every_delivery_acked_should_consume_all_once(
        herald: HeraldServer, client: Client):
    topic = client.create_topic(partitions=2, prefix="ws-consume")
    group = unique("workers")
    client.put_group(topic, group, mode="queue", start="earliest", ack_wait_ms=600_000)
    published = publish(client, topic, 40)

    received: list[str] = []
    acked = 0
    with group_socket(herald, topic, group, "ws-1", max_unsettled=5) as socket:
        unsettled: set[str] = set()
        while acked < len(published):
            message = receive(socket)
            if "delivery" in message:
                delivery = message["delivery"]
                assert delivery["attempt"] == 1, delivery
                received.append(delivery["event"]["id"])
                unsettled.add(delivery["delivery_id"])
                # The server keeps at most `max` unsettled on the socket.
                assert len(unsettled) <= 5
                # Settle in pairs, so acks race the next deliveries.
                if len(unsettled) >= 2 or len(received) == len(published):
                    socket.send(json.dumps({"ack": sorted(unsettled)}))
                    unsettled.clear()
            else:
                assert set(message) == {"ack"}, message
                assert message["ack"]["unknown"] == [], message
                acked += message["ack"]["acked"]

    assert acked == len(published)
    assert sorted(received) == sorted(published), "lost or repeated deliveries"

    def drained() -> dict[str, Any] | None:
        status = client.group_status(topic, group)
        done = status["in_flight"] == 0 and status["pending"] == 0 and all(
            partition["lag"] == 0 for partition in status["partitions"])
        return status if done else None

    wait_until(drained, "the group to have nothing in flight, pending or lagging")


def test_given_unsettled_deliveries_when_socket_closes_should_return_them_at_once(
        herald: HeraldServer, client: Client):
    """With a 10-minute ack wait, only the close can explain the redelivery."""
    topic = client.create_topic(prefix="ws-leave")
    group = unique("workers")
    client.put_group(topic, group, mode="queue", start="earliest", ack_wait_ms=600_000)
    published = publish(client, topic, 3)

    with group_socket(herald, topic, group, "ws-first", max_unsettled=10) as socket:
        first = [receive(socket)["delivery"] for _ in published]
    assert sorted(d["event"]["id"] for d in first) == sorted(published)

    with group_socket(herald, topic, group, "ws-second", max_unsettled=10) as socket:
        second = [receive(socket)["delivery"] for _ in published]
        assert sorted(d["event"]["id"] for d in second) == sorted(published)
        assert all(d["attempt"] == 2 for d in second), second
        socket.send(json.dumps({"ack": [d["delivery_id"] for d in second], "sync": True}))
        reply = receive(socket)
    assert reply == {"ack": {"acked": 3, "unknown": []}}
