"""A real OTLP/gRPC trace receiver for the tracing tests: serves
opentelemetry.proto.collector.trace.v1.TraceService/Export (the messages of
the `opentelemetry-proto` package) on a free loopback port, and prints each
exported span as one JSON line on stdout, with its resource's attributes
and the metadata the export carried.

usage: otlp_receiver.py
Prints `LISTENING <port>` first; serves until stdin is closed.
"""

import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)


def any_value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind is None:
        return None
    return getattr(value, kind)


def attributes(key_values):
    return {kv.key: any_value(kv.value) for kv in key_values}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        metadata = {key: value for key, value in context.invocation_metadata()}
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    line = {
                        "traceId": span.trace_id.hex(),
                        "spanId": span.span_id.hex(),
                        "parentSpanId": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "startNanos": span.start_time_unix_nano,
                        "endNanos": span.end_time_unix_nano,
                        "attributes": attributes(span.attributes),
                        "events": [event.name for event in span.events],
                        "statusCode": span.status.code,
                        "statusMessage": span.status.message,
                        "resource": resource,
                        "metadata": metadata,
                    }
                    print(json.dumps(line), flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("LISTENING", port, flush=True)
    sys.stdin.read()
    server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
