"""gRPC on Herald's one port (h2c), driven the way a generic tool (grpcurl,
Postman, an IDE) does: no stubs compiled from herald.proto, only what server
reflection serves.

Two reflection clients: grpcio-reflection's own (`grpc_reflection.v1alpha`:
its stub and `ProtoReflectionDescriptorDatabase`), and a v1 client
(`grpc.reflection.v1`). grpcio-reflection 1.85 ships no v1 client, so the v1
messages are built here from v1alpha's descriptor with the package renamed:
v1 is the same messages, field for field, under the new package name.

From the served descriptors a message factory builds the request and
response classes, and a generic `channel.unary_unary` calls herald.v1.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterable

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_reflection.v1alpha.reflection_pb2_grpc import ServerReflectionStub

from herald_support import Client, HeraldServer, strict_event, unique

HERALD_SERVICES = {
    "herald.v1.Events", "herald.v1.Topics", "herald.v1.Groups",
    "herald.v1.Streams", "herald.v1.Jobs", "herald.v1.Webhooks",
}
HEALTH = "grpc.health.v1.Health"
VERSIONS = ["v1", "v1alpha"]
TIMEOUT = 10


@pytest.fixture(scope="module")
def channel(herald: HeraldServer):
    with grpc.insecure_channel(herald.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        yield channel


# ---------------------------------------------------------------- the v1 client


def _v1_messages() -> tuple[type[Message], type[Message]]:
    """grpc.reflection.v1's ServerReflectionRequest and Response classes."""
    old, new = "grpc.reflection.v1alpha", "grpc.reflection.v1"
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = new

    def renamed(type_name: str) -> str:
        return f".{new}.{type_name[len(old) + 2:]}"

    def rename_fields(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                # Only message fields name a type (setting it on a scalar
                # one would be an error).
                if field.type_name.startswith(f".{old}."):
                    field.type_name = renamed(field.type_name)
            rename_fields(message.nested_type)

    rename_fields(proto.message_type)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{new}.{name}"))
        for name in ("ServerReflectionRequest", "ServerReflectionResponse"))


class V1Reflection:
    """A minimal grpc.reflection.v1 client: list services, and a descriptor
    pool holding the file that defines a symbol and its dependencies."""

    PATH = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

    def __init__(self, channel: grpc.Channel):
        self.request, response = _v1_messages()
        self.call = channel.stream_stream(
            self.PATH, request_serializer=self.request.SerializeToString,
            response_deserializer=response.FromString)

    def ask(self, **fields: Any) -> Message:
        [response] = list(self.call(iter([self.request(**fields)]), timeout=TIMEOUT))
        assert response.WhichOneof("message_response") != "error_response", response
        return response

    def services(self) -> set[str]:
        response = self.ask(list_services="")
        return {service.name for service in response.list_services_response.service}

    def pool_for(self, symbol: str) -> descriptor_pool.DescriptorPool:
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

        def take(response: Message) -> None:
            for raw in response.file_descriptor_response.file_descriptor_proto:
                proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files.setdefault(proto.name, proto)

        take(self.ask(file_containing_symbol=symbol))
        while missing := {dep for proto in files.values() for dep in proto.dependency} - set(files):
            for name in missing:
                take(self.ask(file_by_filename=name))
        pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()
        while len(added) < len(files):
            for name, proto in files.items():
                if name not in added and set(proto.dependency) <= added:
                    pool.Add(proto)
                    added.add(name)
        return pool


def list_services(channel: grpc.Channel, version: str) -> set[str]:
    if version == "v1":
        return V1Reflection(channel).services()
    stub = ServerReflectionStub(channel)
    request = v1alpha_pb2.ServerReflectionRequest(list_services="")
    [response] = list(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    return {service.name for service in response.list_services_response.service}


def herald_pool(channel: grpc.Channel, version: str) -> descriptor_pool.DescriptorPool:
    if version == "v1":
        return V1Reflection(channel).pool_for("herald.v1.Topics")
    # grpcio-reflection's reference client, fetching descriptors on demand.
    return descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))


def call_unary(channel: grpc.Channel, pool: descriptor_pool.DescriptorPool, method_name: str,
               request: dict[str, Any]) -> dict[str, Any]:
    """Calls `package.Service.Method` with a request given as proto3 JSON,
    through classes built from the served descriptors; the answer as JSON."""
    method = pool.FindMethodByName(method_name)
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString)
    response = call(json_format.ParseDict(request, request_class()), timeout=TIMEOUT)
    return json_format.MessageToDict(response, preserving_proto_field_name=True)


# ---------------------------------------------------------------- listing


@pytest.mark.parametrize("version", VERSIONS)
def test_given_reflection_when_listing_services_should_name_herald_v1(channel, version):
    services = list_services(channel, version)
    assert HERALD_SERVICES <= services, services


@pytest.mark.parametrize("version", VERSIONS)
def test_given_reflection_when_listing_services_should_name_health(channel, version):
    """The health service is served (see the test below), so reflection
    should list it: tools discover it there."""
    assert HEALTH in list_services(channel, version)


def test_given_health_check_when_called_should_answer_serving(channel):
    # grpc.health.v1.HealthCheckRequest{service: ""} is the empty message;
    # the answer is HealthCheckResponse{status: SERVING (1)}, field 1 varint.
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=bytes, response_deserializer=bytes)
    assert check(b"", timeout=TIMEOUT) == b"\x08\x01"


# ---------------------------------------------------------------- calling


@pytest.mark.parametrize("version", VERSIONS)
def test_given_reflected_descriptors_when_calling_herald_v1_should_work(
        channel, client: Client, version):
    pool = herald_pool(channel, version)
    for service in HERALD_SERVICES:
        assert pool.FindServiceByName(service).methods, service

    topic = unique(f"grpc-{version}")
    created = call_unary(channel, pool, "herald.v1.Topics.CreateTopic",
                         {"topic": {"name": topic, "partitions": 2}})
    assert created["name"] == topic and created["partitions"] == 2
    listed = call_unary(channel, pool, "herald.v1.Topics.ListTopics", {})
    assert topic in {listed_topic["name"] for listed_topic in listed["topics"]}

    data = json.dumps({"total": 42}).encode()
    published = call_unary(channel, pool, "herald.v1.Events.Publish", {
        "topic": topic,
        "events": [{
            "id": "grpc-1", "source": "/interop/grpc", "type": "com.example.grpc",
            "subject": "orders/1", "datacontenttype": "application/json",
            "data": base64.b64encode(data).decode(), "key": "customer-1",
            "extensions": {"region": {"string": "eu"}},
        }],
    })
    [result] = published["results"]
    assert result["id"] == "grpc-1"
    partition = result.get("partition", 0)

    read = call_unary(channel, pool, "herald.v1.Events.Read",
                      {"topic": topic, "partition": partition, "from_offset": 0})
    [stored] = read["events"]
    assert stored["event"]["id"] == "grpc-1"
    assert base64.b64decode(stored["event"]["data"]) == data

    # The same event over REST.
    [event] = client.read(topic, partition)
    assert (event["id"], event["subject"], event["key"], event["region"], event["data"]) == (
        "grpc-1", "orders/1", "customer-1", "eu", {"total": 42})

    # Failures carry gRPC codes (docs/errors.md), not transport errors.
    with pytest.raises(grpc.RpcError) as failure:
        call_unary(channel, pool, "herald.v1.Topics.DescribeTopic", {"topic": unique("absent")})
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_given_event_published_over_grpc_when_read_over_http_should_be_strict(
        channel, client: Client):
    pool = herald_pool(channel, "v1")
    topic = client.create_topic(prefix="grpc-strict")
    call_unary(channel, pool, "herald.v1.Events.Publish", {
        "topic": topic,
        "events": [{"id": "grpc-2", "source": "/interop/grpc", "type": "com.example.grpc",
                    "data": base64.b64encode(b'{"n": 1}').decode(), "delay_ms": "60000"}],
    })
    [event] = client.read(topic)
    parsed = strict_event(event)
    assert (parsed.get_id(), parsed.get_data()) == ("grpc-2", {"n": 1})
    assert isinstance(parsed.get_extension("deliverat"), str)
    assert isinstance(parsed.get_extension("appendedat"), str)


def test_given_lone_surrogate_in_json_data_over_grpc_when_read_over_http_should_not_be_handed_out(
        channel, client: Client):
    """gRPC carries data as bytes; JSON bytes holding `"\\ud800"` must not
    come out of the REST API as a lone surrogate inside `data`: refused
    (INVALID_ARGUMENT with a documented code), or kept opaque
    (`data_base64`)."""
    pool = herald_pool(channel, "v1")
    topic = client.create_topic(prefix="grpc-surrogate")
    try:
        call_unary(channel, pool, "herald.v1.Events.Publish", {
            "topic": topic,
            "events": [{"id": "grpc-s", "source": "/s", "type": "t",
                        "datacontenttype": "application/json",
                        "data": base64.b64encode(b'{"x":"\\ud800"}').decode()}],
        })
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert client.end_offsets(topic) == [0]
        return
    read = client.http.get(f"/v1/topics/{topic}/events")
    try:
        json.dumps(read.json(), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise AssertionError(f"Herald handed out a lone surrogate: {read.text}") from error


# ---------------------------------------------------------------- unknown methods


@pytest.mark.parametrize("path", [
    "/herald.v1.Nope/Publish",        # an unknown service of Herald's package
    "/herald.v1.Topics/Nope",         # an unknown method of a known service
    "/nope.v9.Elsewhere/Method",      # an unknown package
])
def test_given_unknown_method_when_called_should_be_unimplemented(channel, path):
    """A gRPC status UNIMPLEMENTED, sent by the server, not grpcio's mapping
    of an HTTP 404 (nor PERMISSION_DENIED/UNKNOWN)."""
    call = channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
    with pytest.raises(grpc.RpcError) as failure:
        call(b"", timeout=TIMEOUT)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED, failure.value.details()
    assert "http2 header with status" not in (failure.value.details() or ""), (
        f"{path} answered HTTP, not gRPC: {failure.value.details()}")
