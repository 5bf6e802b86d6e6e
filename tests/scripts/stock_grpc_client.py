#!/usr/bin/env python3
"""A stock gRPC client against a repld node: Python grpcio with reflection and health.

Connects over mutual TLS (--ca/--cert/--key) or plaintext loopback (--plaintext), then:

- lists the services by reflection, over grpc.reflection.v1alpha (grpcio-reflection's own
  client) and over grpc.reflection.v1 (the same messages on the v1 method path);
- resolves repld.v1.Storage and repld.v1.Admin through a descriptor pool fed by reflection,
  so the served descriptors are complete enough for a dynamic client;
- calls grpc.health.v1.Health/Check for the whole server ("") and for each repld service.

Prints a JSON summary on stdout. Exits 0 when every expected service is listed and every health
check answers SERVING, 1 otherwise (with the reason on stderr), 2 on a usage error.

Run by tests/tests/node.rs; needs `pip install grpcio grpcio-reflection grpcio-health-checking`
(scripts/setup installs them).
"""

import argparse
import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

EXPECTED = ["repld.v1.Storage", "repld.v1.Admin"]
TIMEOUT = 10.0


def read(path):
    with open(path, "rb") as f:
        return f.read()


def open_channel(args):
    if args.plaintext:
        return grpc.insecure_channel(args.target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    options = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(args.target, creds, options=options)


def list_services_v1(channel):
    """ServerReflectionInfo on the v1 path; v1 and v1alpha messages are the same on the wire."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = call(iter([request]), timeout=TIMEOUT)
    first = next(responses)
    if first.HasField("error_response"):
        raise RuntimeError(f"v1 reflection error: {first.error_response}")
    return sorted(s.name for s in first.list_services_response.service)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT")
    p.add_argument("--plaintext", action="store_true")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--server-name", help="name to check the server certificate against")
    args = p.parse_args()
    if not args.plaintext and not (args.ca and args.cert and args.key):
        p.error("mutual TLS needs --ca, --cert and --key (or use --plaintext)")

    channel = open_channel(args)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    summary = {}
    problems = []

    # v1alpha: grpcio-reflection's descriptor database.
    db = ProtoReflectionDescriptorDatabase(channel)
    summary["v1alpha_services"] = sorted(db.get_services())
    summary["v1_services"] = list_services_v1(channel)
    for version in ("v1alpha_services", "v1_services"):
        for name in EXPECTED + ["grpc.health.v1.Health"]:
            if name not in summary[version]:
                problems.append(f"{name} is not listed by reflection ({version})")

    pool = DescriptorPool(db)
    methods = {}
    for name in EXPECTED:
        try:
            methods[name] = sorted(m.name for m in pool.FindServiceByName(name).methods)
        except KeyError as e:
            problems.append(f"reflection cannot describe {name}: {e}")
    summary["methods"] = methods

    health = health_pb2_grpc.HealthStub(channel)
    statuses = {}
    for service in [""] + EXPECTED:
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        statuses[service] = status
        if status != "SERVING":
            problems.append(f"health of {service!r} is {status}, not SERVING")
    summary["health"] = statuses

    print(json.dumps(summary, indent=2, sort_keys=True))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except grpc.RpcError as e:
        print(f"gRPC call failed: {e.code()}: {e.details()}", file=sys.stderr)
        sys.exit(1)
    except grpc.FutureTimeoutError:
        print("could not connect within the timeout", file=sys.stderr)
        sys.exit(1)
