#!/usr/bin/env python3
"""A gRPC client that is not ours: Python grpcio talks to hvagent with nothing but the
standard health and reflection services, and calls GetInventory with message types it learned
through reflection alone, on a channel with default options or with a given `:authority`. Prints one JSON object with what it saw; the Rust test judges it."""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(socket_path, authority, services):
    # "default": the channel as every script writes it, with grpc-core's own `:authority` (the
    # socket path, which the agent accepts on its Unix socket); otherwise the authority to send.
    options = [] if authority == "default" else [("grpc.default_authority", authority)]
    channel = grpc.insecure_channel(f"unix:{socket_path}", options=options)
    grpc.channel_ready_future(channel).result(timeout=30)
    out = {}

    health = health_pb2_grpc.HealthStub(channel)
    for service in [""] + services:
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        out[f"health[{service}]"] = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    try:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
        out["health[no.such.Service]"] = "answered"
    except grpc.RpcError as e:
        out["health[no.such.Service]"] = e.code().name

    db = ProtoReflectionDescriptorDatabase(channel)
    out["services"] = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName("hvagent.v1.NodeService")
    method = service.methods_by_name["GetInventory"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/hvagent.v1.NodeService/GetInventory",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    inventory = call(request_cls(), timeout=60)
    out["inventory"] = json_format.MessageToDict(inventory, preserving_proto_field_name=True)
    print(json.dumps(out))


if __name__ == "__main__":
    # socket, authority ("default" or a value), then the services whose health to check
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
