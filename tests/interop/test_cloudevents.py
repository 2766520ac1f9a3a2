"""Every event Herald hands back goes through the CloudEvents SDK's strict
HTTP binding (`cloudevents.core.bindings.http.from_http_event`, SDK 2.x),
whatever way it was published (structured, binary, batch; by hand and by the
SDK's own writers) and whatever way it is read (a partition read, a group
fetch, SSE, a topic WebSocket, an event-stream read, a webhook delivery).

The strict parser refuses attribute names outside `[a-z0-9]`, so Herald's
server-assigned attributes must carry CloudEvents names (`appendedat`,
`deliverat`); also tested here: reserved attributes refused, `partitionkey`
as the partition key, lone surrogates refused (issue #21).

Herald has no read that answers in binary mode (`ce-*` headers) or with an
`application/cloudevents-batch+json` body: reads answer JSON documents
holding structured events, so "batch" here is a read's `events` array taken
as a CloudEvents JSON batch, and binary mode is covered on the way in (the
SDK's binary writer, percent-encoding included).
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings.http import HTTPMessage
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse
from httpx_sse import connect_sse
from websockets.sync.client import connect as ws_connect

from herald_support import (
    BATCH,
    STRUCTURED,
    Client,
    HeraldServer,
    assert_problem,
    documented_error_codes,
    strict_batch,
    strict_event,
    strict_structured,
    unique,
    wait_until,
)

EVENT_TIME = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
BINARY_DATA = b"\x00\x01\x02\xfe\xff binary \x80"

# ---------------------------------------------------------------- the corpus


def publish_corpus(client: Client, topic: str) -> list[dict[str, Any]]:
    """Publishes one event of each kind to `topic` (one partition) and
    returns what each should read back as: id, source, type, the optional
    attributes sent, data as the SDK decodes it, and extensions."""
    expected: list[dict[str, Any]] = []

    # Structured, by hand: JSON data, subject, time, key and extensions of
    # each CloudEvents type Herald keeps.
    event = {
        "specversion": "1.0", "id": "ce-json-1", "source": "/interop/shop",
        "type": "com.example.order.placed", "subject": "orders/42",
        "time": "2026-01-02T03:04:05.678Z", "datacontenttype": "application/json",
        "key": "customer-7", "correlationid": "corr-1",
        "region": "eu", "priority": 5, "urgent": True,
        "data": {"total": 42, "items": ["a", "b"], "note": "h\u00e9llo \u2713 \U0001f600"},
    }
    client.publish(topic, event)
    expected.append({
        **{name: event[name] for name in ("id", "source", "type", "subject", "datacontenttype")},
        "time": EVENT_TIME, "data": event["data"],
        "extensions": {"key": "customer-7", "correlationid": "corr-1", "region": "eu",
                       "priority": 5, "urgent": True},
    })

    # Structured, by hand: binary data as data_base64.
    event = {
        "specversion": "1.0", "id": "ce-b64-1", "source": "/interop/shop",
        "type": "com.example.blob", "datacontenttype": "application/octet-stream",
        "data_base64": base64.b64encode(BINARY_DATA).decode(),
    }
    client.publish(topic, event)
    expected.append({"id": "ce-b64-1", "source": "/interop/shop", "type": "com.example.blob",
                     "datacontenttype": "application/octet-stream", "data": BINARY_DATA,
                     "extensions": {}})

    # Structured, written by the SDK.
    sdk_event = CloudEvent(
        attributes={"id": "ce-sdk-1", "source": "/interop/sdk", "type": "com.example.sdk",
                    "subject": "via-sdk", "time": EVENT_TIME,
                    "datacontenttype": "application/json", "tenant": "acme"},
        data={"via": "sdk", "n": [1, 2, 3]},
    )
    post_message(client, topic, ce_http.to_structured_event(sdk_event))
    expected.append({"id": "ce-sdk-1", "source": "/interop/sdk", "type": "com.example.sdk",
                     "subject": "via-sdk", "time": EVENT_TIME,
                     "datacontenttype": "application/json",
                     "data": {"via": "sdk", "n": [1, 2, 3]}, "extensions": {"tenant": "acme"}})

    # Binary mode, written by the SDK: JSON data; a subject and an extension
    # that need percent-encoding in a header.
    sdk_event = CloudEvent(
        attributes={"id": "ce-bin-json-1", "source": "/interop/sdk", "type": "com.example.bin",
                    "subject": "a b%c/\u00e9\"", "time": EVENT_TIME,
                    "datacontenttype": "application/json",
                    "key": "customer-9", "region": "us west"},
        data={"total": 7},
    )
    post_message(client, topic, ce_http.to_binary_event(sdk_event))
    expected.append({"id": "ce-bin-json-1", "source": "/interop/sdk", "type": "com.example.bin",
                     "subject": "a b%c/\u00e9\"", "time": EVENT_TIME,
                     "datacontenttype": "application/json", "data": {"total": 7},
                     "extensions": {"key": "customer-9", "region": "us west"}})

    # Binary mode, written by the SDK: raw bytes.
    sdk_event = CloudEvent(
        attributes={"id": "ce-bin-bytes-1", "source": "/interop/sdk", "type": "com.example.raw",
                    "time": EVENT_TIME, "datacontenttype": "application/octet-stream"},
        data=BINARY_DATA,
    )
    post_message(client, topic, ce_http.to_binary_event(sdk_event))
    expected.append({"id": "ce-bin-bytes-1", "source": "/interop/sdk", "type": "com.example.raw",
                     "time": EVENT_TIME, "datacontenttype": "application/octet-stream",
                     "data": BINARY_DATA, "extensions": {}})

    # Binary mode, by hand: text.
    response = client.publish_raw(topic, b"leave at the door", "text/plain", headers={
        "ce-specversion": "1.0", "ce-id": "ce-bin-text-1", "ce-source": "/shop",
        "ce-type": "order.note", "ce-subject": "door",
    })
    assert response.status_code == 201, response.text
    expected.append({"id": "ce-bin-text-1", "source": "/shop", "type": "order.note",
                     "subject": "door", "datacontenttype": "text/plain",
                     "data": "leave at the door", "extensions": {}})

    # A batch; the second event has no id, so Herald assigns one.
    results = client.publish_batch(topic, [
        {"specversion": "1.0", "id": "ce-batch-1", "source": "/interop/batch",
         "type": "com.example.batch", "data": {"n": 1}},
        {"specversion": "1.0", "source": "/interop/batch", "type": "com.example.batch",
         "data": "two"},
    ])
    assert results[0]["id"] == "ce-batch-1"
    assert results[1]["id"], results
    expected.append({"id": "ce-batch-1", "source": "/interop/batch", "type": "com.example.batch",
                     "data": {"n": 1}, "extensions": {}})
    expected.append({"id": results[1]["id"], "source": "/interop/batch",
                     "type": "com.example.batch", "data": "two", "extensions": {}})
    return expected


def post_message(client: Client, topic: str, message: HTTPMessage) -> None:
    response = client.http.post(f"/v1/topics/{topic}/events", content=message.body,
                                headers=message.headers)
    assert response.status_code == 201, response.text


def assert_round_trip(parsed: BaseCloudEvent, expected: dict[str, Any], topic: str) -> None:
    """What was sent came back, and Herald's own attributes are there under
    CloudEvents names."""
    assert parsed.get_specversion() == "1.0"
    assert parsed.get_id() == expected["id"]
    assert parsed.get_source() == expected["source"]
    assert parsed.get_type() == expected["type"]
    assert parsed.get_subject() == expected.get("subject")
    if "datacontenttype" in expected:
        assert parsed.get_datacontenttype() == expected["datacontenttype"]
    if "time" in expected:
        assert parsed.get_time() == expected["time"]
    assert parsed.get_data() == expected["data"], expected["id"]
    for name, value in expected["extensions"].items():
        assert parsed.get_extension(name) == value, (expected["id"], name)
    # Server-assigned attributes.
    assert parsed.get_extension("topic") == topic
    assert isinstance(parsed.get_extension("partition"), int)
    assert isinstance(parsed.get_extension("offset"), int)
    appended_at = parsed.get_extension("appendedat")
    assert isinstance(appended_at, str), parsed.get_attributes()
    assert isoparse(appended_at).tzinfo is not None


def assert_corpus(parsed: list[BaseCloudEvent], expected: list[dict[str, Any]], topic: str) -> None:
    by_id = {event.get_id(): event for event in parsed}
    assert len(by_id) == len(parsed), "an event came back twice"
    assert sorted(by_id) == sorted(item["id"] for item in expected)
    for item in expected:
        assert_round_trip(by_id[item["id"]], item, topic)


@pytest.fixture(scope="module")
def corpus(herald: HeraldServer):
    client = Client(herald)
    topic = client.create_topic(prefix="corpus")
    expected = publish_corpus(client, topic)
    client.close()
    return topic, expected


# ---------------------------------------------------------------- reads


def test_given_every_publish_mode_when_read_should_return_what_was_sent(client, corpus):
    """The baseline, without the strict parser: the read answer's JSON holds
    each event as sent, in publish order, at dense offsets."""
    topic, expected = corpus
    events = client.read(topic)
    assert [event["id"] for event in events] == [item["id"] for item in expected]
    assert [event["offset"] for event in events] == list(range(len(expected)))
    for event, item in zip(events, expected):
        assert (event["source"], event["type"]) == (item["source"], item["type"])
        if isinstance(item["data"], bytes):
            assert base64.b64decode(event["data_base64"]) == item["data"]
        else:
            assert event["data"] == item["data"]


def test_given_read_answer_when_parsed_as_cloudevents_batch_should_be_strict_events(client, corpus):
    topic, expected = corpus
    assert_corpus(strict_batch(client.read(topic)), expected, topic)


def test_given_queue_group_fetch_when_parsed_should_be_strict_events(client, corpus):
    topic, expected = corpus
    group = unique("fetch")
    client.put_group(topic, group, mode="queue", start="earliest")
    deliveries: list[dict[str, Any]] = []

    def fetched_all() -> bool:
        response = client.http.post(f"/v1/topics/{topic}/groups/{group}/fetch",
                                    json={"member": "m1", "max": 100, "wait_ms": 1000})
        assert response.status_code == 200, response.text
        deliveries.extend(response.json()["deliveries"])
        return len(deliveries) >= len(expected)

    wait_until(fetched_all, "every event to be fetched")
    response = client.http.post(f"/v1/topics/{topic}/groups/{group}/ack",
                                json={"delivery_ids": [d["delivery_id"] for d in deliveries]})
    assert response.json()["acked"] == len(expected)
    assert_corpus([strict_event(d["event"]) for d in deliveries], expected, topic)


def test_given_sse_subscription_when_each_data_parsed_should_be_strict_events(herald, corpus):
    """Each SSE `data:` is one structured event, parsed from the exact text
    Herald sent."""
    topic, expected = corpus
    parsed = []
    with httpx.Client(base_url=herald.base_url, timeout=10) as http:
        with connect_sse(http, "GET", f"/v1/topics/{topic}/events/stream",
                         params={"from": "earliest"}) as source:
            assert source.response.status_code == 200
            for sse in source.iter_sse():
                parsed.append(strict_structured(sse.data))
                if len(parsed) == len(expected):
                    break
    assert_corpus(parsed, expected, topic)


def test_given_topic_websocket_when_each_event_parsed_should_be_strict_events(herald, corpus):
    topic, expected = corpus
    parsed = []
    with ws_connect(f"{herald.ws_url}/v1/topics/{topic}/ws?from=earliest",
                    open_timeout=10) as socket:
        while len(parsed) < len(expected):
            message = json.loads(socket.recv(timeout=10))
            assert set(message) == {"id", "event"}, message
            parsed.append(strict_event(message["event"]))
    assert_corpus(parsed, expected, topic)


def test_given_event_stream_when_read_should_be_strict_events(client):
    topic = client.create_topic(prefix="stream")
    events = [
        {"specversion": "1.0", "source": "/interop/orders", "type": "order.created",
         "data": {"order": 42}},
        {"specversion": "1.0", "source": "/interop/pay", "type": "payment.succeeded",
         "datacontenttype": "application/octet-stream",
         "data_base64": base64.b64encode(BINARY_DATA).decode()},
    ]
    response = client.http.post(f"/v1/topics/{topic}/streams/order-42/events", json=events,
                                headers={"If-None-Match": "*"})
    assert response.status_code == 201, response.text
    response = client.http.get(f"/v1/topics/{topic}/streams/order-42/events")
    assert response.status_code == 200, response.text
    returned = response.json()["events"]
    parsed = strict_batch(returned)
    assert [event.get_type() for event in parsed] == ["order.created", "payment.succeeded"]
    assert [event.get_data() for event in parsed] == [{"order": 42}, BINARY_DATA]
    assert [event.get_extension("version") for event in parsed] == [0, 1]
    assert all(isinstance(event.get_extension("appendedat"), str) for event in parsed)


class Receiver:
    """A webhook receiver on loopback: records each request, answers 204."""

    def __init__(self):
        self.requests: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_given_webhook_delivery_when_parsed_as_http_message_should_be_strict_events(client):
    """A webhook delivery is a real CloudEvents HTTP request: its own headers
    and body go to the SDK as they arrived."""
    topic = client.create_topic(prefix="webhook")
    receiver = Receiver()
    try:
        response = client.http.post("/v1/webhooks/endpoints",
                                    json={"url": receiver.url, "filter": {"topics": [topic]}})
        assert response.status_code == 201, response.text
        endpoint = response.json()["endpoint_id"]
        expected = publish_corpus(client, topic)
        parsed = []
        deadline = time.monotonic() + 30
        while len(parsed) < len(expected):
            headers, body = receiver.requests.get(timeout=max(0.1, deadline - time.monotonic()))
            assert headers["content-type"].split(";")[0] == STRUCTURED, headers
            assert headers.get("webhook-id", "").startswith(f"{topic}."), headers
            parsed.append(ce_http.from_http_event(HTTPMessage(headers=headers, body=body)))
        client.http.delete(f"/v1/webhooks/endpoints/{endpoint}")
    finally:
        receiver.close()
    assert_corpus(parsed, expected, topic)


# ---------------------------------------------------------------- delivery time


FUTURE = "2030-06-01T12:00:00.000Z"
DELAY_MS = 60_000


@pytest.mark.parametrize("mode", ["structured", "binary"])
@pytest.mark.parametrize("name,value", [
    ("deliverat", FUTURE), ("delayms", DELAY_MS),
    # The names before the rename, accepted for one more release.
    ("deliver_at", FUTURE), ("delay_ms", DELAY_MS),
])
def test_given_delivery_time_when_read_back_should_be_deliverat(client, mode, name, value):
    topic = client.create_topic(prefix="deliverat")
    before_ms = time.time() * 1000
    if mode == "structured":
        client.publish(topic, {"specversion": "1.0", "id": "due-1", "source": "/interop",
                               "type": "com.example.due", name: value, "data": {"x": 1}})
    else:
        response = client.publish_raw(topic, b'{"x": 1}', "application/json", headers={
            "ce-specversion": "1.0", "ce-id": "due-1", "ce-source": "/interop",
            "ce-type": "com.example.due", f"ce-{name}": str(value),
        })
        assert response.status_code == 201, response.text
    after_ms = time.time() * 1000
    [event] = client.read(topic)
    assert "deliver_at" not in event and "delay_ms" not in event and "delayms" not in event, event
    parsed = strict_event(event)
    due = isoparse(parsed.get_extension("deliverat"))
    if name in ("deliverat", "deliver_at"):
        assert due == isoparse(FUTURE)
    else:
        # Millisecond precision, so allow the one the clock reading rounds.
        assert before_ms + DELAY_MS - 1 <= due.timestamp() * 1000 <= after_ms + DELAY_MS + 1
    assert parsed.get_data() == {"x": 1}


# ---------------------------------------------------------------- refusals


def publish_in_mode(client: Client, topic: str, mode: str, attributes: dict[str, Any]):
    """Publishes one event with these extra attributes in `mode` (a batch
    puts a valid event before it); the response."""
    event = {"specversion": "1.0", "id": unique("ev"), "source": "/interop",
             "type": "com.example.refused", **attributes}
    if mode == "structured":
        return client.publish_raw(topic, json.dumps(event).encode(), STRUCTURED)
    if mode == "batch":
        valid = {"specversion": "1.0", "id": unique("ok"), "source": "/interop",
                 "type": "com.example.fine"}
        return client.publish_raw(topic, json.dumps([valid, event]).encode(), BATCH)
    headers = {f"ce-{name}": str(value) for name, value in event.items()}
    return client.publish_raw(topic, b"{}", "application/json", headers=headers)


@pytest.mark.parametrize("mode", ["structured", "binary", "batch"])
@pytest.mark.parametrize("name,value", [
    ("topic", "elsewhere"), ("offset", 7), ("appendedat", "2020-01-01T00:00:00Z"),
    ("appended_at", "2020-01-01T00:00:00Z"),
])
def test_given_server_assigned_attribute_when_published_should_be_reserved_attribute(
        client, mode, name, value):
    topic = client.create_topic(prefix="reserved")
    response = publish_in_mode(client, topic, mode, {name: value})
    problem = assert_problem(response, 400, "reserved_attribute")
    assert name in problem.get("detail", ""), problem
    assert client.end_offsets(topic) == [0], "a refused publish appended something"


def test_given_partitionkey_when_published_should_partition_like_key(client):
    """`partitionkey` (the CloudEvents Partitioning extension) is the
    partition key: in every mode it lands where `key` does."""
    topic = client.create_topic(partitions=8, prefix="partitionkey")
    for index in range(6):
        key = f"customer-{index}"
        base = {"specversion": "1.0", "source": "/interop", "type": "com.example.keyed"}
        partitions = {
            "key": client.publish(topic, {**base, "key": key})["partition"],
            "partitionkey": client.publish(topic, {**base, "partitionkey": key})["partition"],
            "partitionkey again": client.publish(topic, {**base, "partitionkey": key})["partition"],
            "batch": client.publish_batch(topic, [{**base, "partitionkey": key}])[0]["partition"],
        }
        response = client.publish_raw(topic, b"{}", "application/json", headers={
            "ce-specversion": "1.0", "ce-source": "/interop", "ce-type": "com.example.keyed",
            "ce-partitionkey": key,
        })
        assert response.status_code == 201, response.text
        partitions["binary"] = response.json()["results"][0]["partition"]
        assert len(set(partitions.values())) == 1, (key, partitions)
    # All of them read back as strict events with their key.
    returned = [event for partition in range(8) for event in client.read(topic, partition)]
    assert len(returned) == 6 * 5
    for event in strict_batch(returned):
        key = event.get_extension("key") or event.get_extension("partitionkey")
        assert key is not None and key.startswith("customer-"), event.get_attributes()


LONE_SURROGATES = {
    "data, high half": b'{"specversion":"1.0","id":"s-1","source":"/s","type":"t",'
                       b'"data":{"x":"\\ud800"}}',
    "data, low half": b'{"specversion":"1.0","id":"s-2","source":"/s","type":"t",'
                      b'"data":{"x":"a\\udc00b"}}',
    "data, halves reversed": b'{"specversion":"1.0","id":"s-3","source":"/s","type":"t",'
                             b'"data":["\\udc00\\ud800"]}',
    "an attribute": b'{"specversion":"1.0","id":"s-4","source":"/s","type":"t",'
                    b'"note":"\\ud800"}',
}


@pytest.mark.parametrize("mode", ["structured", "batch"])
@pytest.mark.parametrize("case", list(LONE_SURROGATES))
def test_given_lone_surrogate_when_published_should_be_refused(client, mode, case):
    """`"\\ud800"` is valid JSON syntax but no Unicode text (I-JSON forbids
    it): a consumer's strict JSON parser would choke on it, so Herald must
    refuse it with a stable, documented code and append nothing (a batch:
    not even its valid first event)."""
    body = LONE_SURROGATES[case]
    topic = client.create_topic(prefix="surrogate")
    if mode == "structured":
        response = client.publish_raw(topic, body, STRUCTURED)
    else:
        valid = b'{"specversion":"1.0","id":"ok-1","source":"/s","type":"t","data":1}'
        response = client.publish_raw(topic, b"[" + valid + b"," + body + b"]", BATCH)
    problem = assert_problem(response, 400)
    assert problem["code"] in documented_error_codes(), problem
    assert client.end_offsets(topic) == [0], "a refused publish appended something"


def assert_no_lone_surrogate(json_text: str) -> None:
    """No string in this JSON holds half a surrogate pair (UTF-8 cannot
    encode one)."""
    try:
        json.dumps(json.loads(json_text), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise AssertionError(f"Herald handed out a lone surrogate: {json_text}") from error


def test_given_lone_surrogate_in_binary_mode_json_when_read_back_should_not_be_handed_out(
        client):
    """Binary mode carries the JSON data as the body. Refusing it, or keeping
    it as opaque bytes (`data_base64`), are both safe; handing the surrogate
    on inside `data` is not."""
    topic = client.create_topic(prefix="surrogate-binary")
    response = client.publish_raw(topic, b'{"x":"\\ud800"}', "application/json", headers={
        "ce-specversion": "1.0", "ce-id": "s-bin", "ce-source": "/s", "ce-type": "t"})
    if response.status_code != 201:
        problem = assert_problem(response, 400)
        assert problem["code"] in documented_error_codes(), problem
        assert client.end_offsets(topic) == [0]
        return
    read = client.http.get(f"/v1/topics/{topic}/events")
    assert_no_lone_surrogate(read.text)
    [event] = read.json()["events"]
    strict_event(event)


def test_given_surrogate_pair_when_published_should_round_trip(client):
    """The control for the test above: an escaped pair is one character."""
    topic = client.create_topic(prefix="surrogate-pair")
    response = client.publish_raw(
        topic, b'{"specversion":"1.0","id":"pair-1","source":"/s","type":"t",'
               b'"data":{"x":"\\ud83d\\ude00"}}', STRUCTURED)
    assert response.status_code == 201, response.text
    [event] = client.read(topic)
    assert event["data"] == {"x": "\U0001f600"}


def test_given_lone_surrogate_in_a_stream_append_or_a_job_should_be_refused(client):
    """Everywhere JSON enters, not only topic publishes: a stream append and
    a job's `data` and `result` are refused the same way, and nothing is
    created."""
    topic = client.create_topic(prefix="surrogate-elsewhere")
    append = client.http.post(
        f"/v1/topics/{topic}/streams/order-1/events",
        content=b'{"specversion":"1.0","source":"/s","type":"t","data":{"x":"\\udc00"}}',
        headers={"content-type": STRUCTURED})
    assert assert_problem(append, 400)["code"] == "malformed_json"
    assert client.http.get(f"/v1/topics/{topic}/streams/order-1").status_code == 404
    assert client.end_offsets(topic) == [0]

    queue_name = f"surrogates-{uuid.uuid4().hex[:8]}"
    submit = client.http.post(f"/v1/queues/{queue_name}/jobs", content=b'{"data":{"x":"\\ud800"}}',
                              headers={"content-type": "application/json"})
    assert assert_problem(submit, 400)["code"] == "malformed_json"
    # A real job, then a worker's result with a lone surrogate.
    submit = client.http.post(f"/v1/queues/{queue_name}/jobs", json={"data": {"x": 1}})
    assert submit.status_code == 202, submit.text
    job_id = submit.json()["job_id"]
    fetched = client.http.post(f"/v1/queues/{queue_name}/fetch", json={"member": "w1", "wait_ms": 5000})
    assert fetched.status_code == 200, fetched.text
    [delivery] = fetched.json()["deliveries"]
    complete = client.http.post(
        f"/v1/jobs/{job_id}/complete",
        content=b'{"result":{"x":"a\\ud800"},"delivery_id":"' + delivery["delivery_id"].encode() + b'"}',
        headers={"content-type": "application/json"})
    assert assert_problem(complete, 400)["code"] == "malformed_json"
    assert client.http.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded"
