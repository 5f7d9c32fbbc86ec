"""``vibedream-emulator``: a local VibeDream-compatible API server."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from airflow_vibedream.emulator.contract import API_KEY_ENV_VAR
from airflow_vibedream.emulator.faults import parse_cli_rules
from airflow_vibedream.emulator.server import base_url_of, bind_socket, build_server
from airflow_vibedream.emulator.state import EmulatorConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vibedream-emulator", description="A local VibeDream-compatible API server (offline)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV_VAR) or "emulator-key",
        help=f"the accepted API key (default: ${API_KEY_ENV_VAR}, else 'emulator-key')",
    )
    parser.add_argument("--processing-seconds", type=float, default=2.0, help="minimum time a job runs")
    parser.add_argument(
        "--processing-seconds-max",
        type=float,
        default=None,
        help="if set: each job runs a random time up to this",
    )
    parser.add_argument("--tail-share", type=float, default=0.0, help="share of jobs that run long instead")
    parser.add_argument("--tail-seconds", type=float, default=300.0, help="shortest of the long jobs")
    parser.add_argument("--tail-seconds-max", type=float, default=600.0, help="longest of the long jobs")
    parser.add_argument(
        "--synthetic-outputs", action="store_true", help="load tests: no image work, placeholder output URLs"
    )
    parser.add_argument("--cost-cents", type=int, default=2, help="costCents of one run")
    parser.add_argument("--assets-url", default=None, help="base URL of output downloads (default: own URL)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where outputs go (default: a temp dir)")
    parser.add_argument("--sync-wait-seconds", type=float, default=60.0, help="longest sync-mode wait")
    parser.add_argument("--png-compress-level", type=int, default=1, choices=range(10), help="PNG zlib level")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help='a fault rule, e.g. \'{"route": "poll", "kind": "status", "status": 503, "every": 3}\' '
        "(repeatable; see also POST /_emulator/faults)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = EmulatorConfig(
        api_key=args.api_key,
        processing_seconds=args.processing_seconds,
        processing_seconds_max=args.processing_seconds_max,
        tail_share=args.tail_share,
        tail_seconds=args.tail_seconds,
        tail_seconds_max=args.tail_seconds_max,
        synthetic_outputs=args.synthetic_outputs,
        cost_cents=args.cost_cents,
        assets_base_url=args.assets_url,
        data_dir=args.data_dir,
        sync_wait_seconds=args.sync_wait_seconds,
        faults=parse_cli_rules(args.fault),
        png_compress_level=args.png_compress_level,
    )
    sock = bind_socket(args.host, args.port)
    server = build_server(config, sock)
    # The first line on stdout is the contract with scripts and tests: they read the URL from it.
    print(f"VibeDream emulator listening on {base_url_of(sock)}", flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
