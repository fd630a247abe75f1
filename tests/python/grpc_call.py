"""One unary call to the runner with Python's grpcio (gRPC C-core), made as
an operator's script would: default channel options, the socket as target
(`unix:/path`). Messages travel as hex of their protobuf encoding, so no
generated code is needed.

usage: grpc_call.py TARGET METHOD [KEY=VALUE ...] < REQUEST_HEX
(the request on stdin: a long one would not fit in an argument; each
KEY=VALUE is sent as call metadata, as bb_worker sends its trace context);
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
