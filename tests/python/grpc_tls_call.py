"""One unary call to the runner over TLS with Python's grpcio (gRPC C-core),
as a client of a TLS listener makes it.

usage: grpc_tls_call.py TARGET METHOD --ca CA_PEM --server-name NAME
                        [--cert CERT_PEM --key KEY_PEM] < REQUEST_HEX

TARGET is `host:port` or `unix:/path`; NAME the DNS name the server's
certificate must hold. With --cert and --key the client presents that
certificate. Prints `OK <response hex>`, or `ERROR <code> <details>` and
exits 1.
"""

import argparse
import sys

import grpc


def read(path):
    with open(path, "rb") as file:
        return file.read()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("method")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--server-name", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key) if args.key else None,
        certificate_chain=read(args.cert) if args.cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.server_name)]
    request_hex = sys.stdin.read().strip()
    with grpc.secure_channel(args.target, credentials, options=options) as channel:
        call = channel.unary_unary(
            f"/buildbarn.runner.Runner/{args.method}",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            response = call(bytes.fromhex(request_hex), timeout=30)
        except grpc.RpcError as error:
            print("ERROR", error.code().name, error.details())
            return 1
    print("OK", response.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
