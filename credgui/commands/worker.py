"""Run the warm denoiser worker: keeps torch and the denoisers loaded for the hook.

The hook (credgui-reconstruct) hands its denoising to the worker listening on the socket
named by ``worker_socket`` in credgui.toml, and denoises in its own process when none
listens. The worker handles one request at a time (the two half-maps queue onto one GPU),
and exits after --idle-timeout seconds without requests. Its pid is in SOCKET.pid;
`credgui worker --socket SOCKET --stop` asks it to exit.

Examples:
  credgui worker --socket Refine3D/job012/credgui_worker.sock
  credgui worker --socket /tmp/cw.sock --device cuda:0 --idle-timeout 7200
  credgui worker --socket /tmp/cw.sock --threads 2 &
  credgui worker --socket /tmp/cw.sock --stop
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", required=True, metavar="PATH", help="Unix socket to listen on")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="exit after this many seconds without requests (default 1800)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N"
    )
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument(
        "--stop", action="store_true", help="stop the worker serving --socket, then exit"
    )
    parser.add_argument(
        "--status", action="store_true", help="print the worker's state as JSON, then exit"
    )


def main(args: argparse.Namespace) -> int:
    from credgui.denoise import worker

    if args.stop:
        stopped = worker.stop_worker(args.socket)
        print("stopped" if stopped else f"no worker at {args.socket}")
        return 0
    if args.status:
        import json

        state = worker.ping(args.socket)
        print(json.dumps(state) if state else f"no worker at {args.socket}")
        return 0 if state else 1
    if args.threads is not None and args.threads < 1:
        print(f"credgui worker: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    idle = worker.DEFAULT_IDLE_TIMEOUT_S if args.idle_timeout is None else args.idle_timeout
    try:
        return worker.serve(
            args.socket, idle_timeout_s=idle, device=args.device, threads=args.threads
        )
    except (RuntimeError, ValueError) as exc:
        print(f"credgui worker: error: {exc}", file=sys.stderr)
        return 1
