"""Run the warm denoiser worker: keeps torch and the denoisers loaded for the hook.

The hook (credgui-reconstruct) hands its denoising to the worker listening on the socket
named by ``worker_socket`` in credgui.toml ("default": this command's default socket), and
denoises in its own process when none listens. The default socket lies in a private folder
of yours ($XDG_RUNTIME_DIR/credgui/worker.sock, else /tmp/credgui-UID/worker.sock, mode
0700); the hook talks only to a socket and a worker of your own uid (docs/SECURITY.md).
Denoiser calls run one at a time (the two half-maps queue onto one GPU); volumes larger
than --max-box a side are refused. The worker exits after --idle-timeout seconds without
requests. Its pid is in SOCKET.pid; `credgui worker --stop` asks it to exit.

Examples:
  credgui worker                                  # default socket; worker_socket = "default"
  credgui worker --device cuda:0 --idle-timeout 7200
  credgui worker --socket Refine3D/job012/credgui_worker.sock --threads 2 &
  credgui worker --stop
"""

from __future__ import annotations

import argparse
import logging
import math
import sys


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=None, metavar="PATH",
                        help="Unix socket to listen on (default: a private per-user folder, see above)")
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
    parser.add_argument("--max-box", type=int, default=None, metavar="N",
                        help="largest volume side accepted, voxels (default 512: 512 MiB a request)")
    parser.add_argument(
        "--stop", action="store_true", help="stop the worker serving --socket, then exit"
    )
    parser.add_argument(
        "--status", action="store_true", help="print the worker's state as JSON, then exit"
    )


def main(args: argparse.Namespace) -> int:
    from credgui.denoise import worker

    if args.socket is None:
        try:
            args.socket = str(worker.default_socket_path(create=not (args.stop or args.status)))
        except RuntimeError as exc:
            print(f"credgui worker: error: {exc}", file=sys.stderr)
            return 1
    try:
        if args.stop:
            stopped = worker.stop_worker(args.socket)
            print("stopped" if stopped else f"no worker at {args.socket}")
            return 0
        if args.status:
            import json

            state = worker.ping(args.socket)
            print(json.dumps(state) if state else f"no worker at {args.socket}")
            return 0 if state else 1
    except worker.WorkerError as exc:
        print(f"credgui worker: error: {exc}", file=sys.stderr)
        return 1
    if args.threads is not None and args.threads < 1:
        print(f"credgui worker: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    idle = worker.DEFAULT_IDLE_TIMEOUT_S if args.idle_timeout is None else args.idle_timeout
    if not (math.isfinite(idle) and idle > 0):
        print(f"credgui worker: error: --idle-timeout must be a finite number of seconds > 0, got {idle!r} "
              "(e.g. 86400 for a day)", file=sys.stderr)
        return 2
    max_box = worker.DEFAULT_MAX_BOX if args.max_box is None else args.max_box
    if max_box < 1:
        print(f"credgui worker: error: --max-box must be >= 1, got {max_box}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(f"credgui worker: serving {args.socket}", file=sys.stderr, flush=True)
    try:
        return worker.serve(
            args.socket, idle_timeout_s=idle, device=args.device, threads=args.threads, max_box=max_box
        )
    except (RuntimeError, ValueError) as exc:
        print(f"credgui worker: error: {exc}", file=sys.stderr)
        return 1
