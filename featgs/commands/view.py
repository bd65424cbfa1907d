"""``featgs view``: the browser viewer of a run folder."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from featgs.commands.serve import is_loopback
from featgs.commands.threads import add_threads_argument, apply_threads
from featgs.errors import FeatgsError

DESCRIPTION = """\
Serve a trained run in the browser (viser). Orbit with the mouse; the server renders each
browser's view (low resolution while the camera moves, full when it rests). Modes: RGB, depth,
feature PCA, relevancy of the current query, segmentation by the run's label names.
Type a query to select what it names; click an object (point prompt) or Shift+drag a box (box
prompt) to select by feature affinity (SAM's decoder when the run has SAM features). Delete,
extract or recolour the selection, undo, and save the edited scene as RUN/edits/edited-<n>.ply.
Several browsers can connect at once, each with its own camera; edits are shared.
"""

EPILOG = """\
examples:
  featgs view out/demo/run                       # then open http://127.0.0.1:8080
  featgs view runs/garden --host 0.0.0.0 --port 8081 --still-size 384
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("view", help="browser viewer: orbit, render modes, queries, prompts, edits",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", type=Path, help="run folder made by `featgs train`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on, IPv4 or IPv6 (default 127.0.0.1: this machine only; 0.0.0.0 or :: "
                        "lets other machines in, with a warning: the viewer has no authentication)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; the next free one if taken; 0: any)")
    p.add_argument("--still-size", type=int, default=256, metavar="PX", help="long side of the resting view in pixels (default 256)")
    p.add_argument("--moving-size", type=int, default=128, metavar="PX", help="long side while the camera moves (default 128)")
    p.add_argument("--max-renders", type=int, default=max(1, min(4, os.cpu_count() or 1)), metavar="N",
                   help="renders at once over all browsers (default: the CPU count, at most 4)")
    add_threads_argument(p, default=1, why="parallel renders of several browsers scale better, and a render "
                                            "does not stall when browsers or other programs take the cores")
    p.add_argument("--no-cameras", action="store_true", help="do not show the training cameras")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from featgs.run import read_run
    from featgs.viewer import ViewerApp, ViewerConfig
    from featgs.viewer.app import check_address

    read_run(args.run)  # a one-line error before anything heavy is imported
    apply_threads(args)
    config = ViewerConfig(host=args.host, port=args.port, still_size=args.still_size, moving_size=args.moving_size,
                          max_renders=args.max_renders, frustums=not args.no_cameras)
    check_address(args.host, args.port)  # before the run is loaded: a bad --host is a one-line error at once
    try:
        import viser  # noqa: F401
    except ImportError:
        raise FeatgsError("featgs view needs the viser package: pip install viser") from None
    app = ViewerApp(args.run, config)
    app.start()
    if not is_loopback(args.host):
        print(f"featgs: warning: listening on {args.host}: anyone who can reach it can view and edit this run "
              f"and save edits into it", file=sys.stderr, flush=True)
    print(f"featgs view: serving {args.run} at {app.url} (Ctrl-C to stop)", flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: app.stop())
        # Honour Ctrl-C even when the parent shell started us with SIGINT ignored (background jobs).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        app.serve()
    except KeyboardInterrupt:
        app.stop()
    print("featgs view: stopped", file=sys.stderr, flush=True)
    return 0
