"""One unary call to the runner with Python's grpcio, carrying trace
context metadata as bb_worker's OpenTelemetry client sends it. Messages
travel as hex of their protobuf encoding.

usage: traced_call.py TARGET METHOD [KEY=VALUE ...] < REQUEST_HEX
prints `OK <response hex>`, or `ERROR <code> <details>` and exits 1.
"""

import sys

import grpc


def main() -> int:
    target, method = sys.argv[1:3]
    metadata = [tuple(pair.split("=", 1)) for pair in sys.argv[3:]]
    request_hex = sys.stdin.read().strip()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/buildbarn.runner.Runner/{method}",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            response = call(bytes.fromhex(request_hex), metadata=metadata)
        except grpc.RpcError as error:
            print("ERROR", error.code().name, error.details())
            return 1
    print("OK", response.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
