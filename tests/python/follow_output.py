"""Follows an action's output with Python's grpcio (gRPC C-core), as an
operator's script would: one server-streaming call to
`rbe_runner.output.v1.Output/Follow`, default channel options, the socket
as target (`unix:/path`). Messages travel as hex of their protobuf
encoding, so no generated code is needed.

usage: follow_output.py TARGET < REQUEST_HEX
prints `CHUNK <hex>` for each OutputChunk as it arrives, then `END`; or
`ERROR <code> <details>` and exits 1.
"""

import sys

import grpc


def main() -> int:
    target = sys.argv[1]
    request_hex = sys.stdin.read().strip()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_stream(
            "/rbe_runner.output.v1.Output/Follow",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            for chunk in call(bytes.fromhex(request_hex)):
                print("CHUNK", chunk.hex(), flush=True)
        except grpc.RpcError as error:
            print("ERROR", error.code().name, error.details())
            return 1
    print("END")
    return 0


if __name__ == "__main__":
    sys.exit(main())
