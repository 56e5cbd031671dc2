"""The command-line flags that say how to reach a csm-serve, shared by the CLIs."""

from __future__ import annotations

import argparse
import os

from csm_client.connection import DEFAULT_TARGET, Connection


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("CSM_SERVER", DEFAULT_TARGET),
                        help=f"host:port [env CSM_SERVER; default {DEFAULT_TARGET}]")
    parser.add_argument("--token", default=os.environ.get("CSM_TOKEN"), help="bearer token [env CSM_TOKEN]")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    parser.add_argument("--ca-cert", help="PEM of the CA that signed the server's certificate (implies --tls)")
    parser.add_argument("--client-cert", help="PEM client certificate for mTLS (with --client-key)")
    parser.add_argument("--client-key", help="PEM client key for mTLS")
    parser.add_argument("--timeout", type=float, default=None, help="deadline of each call in seconds")


def connection_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Connection:
    try:
        return Connection(target=args.server, token=args.token, tls=args.tls, ca_cert=args.ca_cert,
                          client_cert=args.client_cert, client_key=args.client_key)
    except ValueError as exc:
        parser.error(str(exc))
