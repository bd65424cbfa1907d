"""``featgs serve``: the HTTP JSON API over one run."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
from pathlib import Path

from featgs.errors import FeatgsError

DESCRIPTION = """\
Serve a trained run over HTTP (JSON in, JSON or PNG out):

  GET  /health          liveness, label names, number of views
  GET  /views           the run's views, for cameras given as {"view": I, "split": "test"}
  GET  /openapi.json    the full API with request schemas
  POST /query           {"text": "red mug"} -> num_selected, bbox, centroid, ...
  POST /segment         {"camera": {"view": 0}, "labels": [...]} -> label map (base64 PNG), counts
  POST /prompt          {"camera": ..., "points": [[x, y]], "box": [x0, y0, x1, y1]} -> mask, selection
  POST /edit            {"selection": {"text": "mug"}, "op": "delete", "name": "no_mug"} -> RUN/edits/no_mug.ply
  POST /render          {"camera": ..., "mode": "rgb|depth|features|relevancy|segmentation|selection"} -> PNG

A camera is {"view": I, "split": "test"|"train"} or {"width", "height", "K", "camtoworld"}
(OpenCV, at most 2048x2048). Bad requests get a 4xx answer {"error": "..."}. Binds to
127.0.0.1 unless --host says otherwise: the API has no authentication.
"""

EPILOG = """\
examples:
  featgs serve out/demo/run
  curl -s localhost:8000/query -d '{"text": "cup"}'
  curl -s localhost:8000/render -d '{"camera": {"view": 0}, "mode": "relevancy", "text": "fruit"}' > heat.png
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP JSON API: query, segment, prompt, edit, render",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", type=Path, help="run folder made by `featgs train` or `featgs demo`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--sam-checkpoint", metavar="PATH", type=Path,
                   help="runs with SAM features: prompts go through SAM's mask decoder with these weights "
                        "(default: the checkpoint the run was trained with, if still there; else feature affinity)")
    p.add_argument("--quiet", action="store_true", help="no request log")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from featgs.query import FeatureField
    from featgs.server import FieldServer

    if not 0 <= args.port <= 65535:
        raise FeatgsError(f"--port must be in 0..65535, got {args.port}")
    field = FeatureField.load(args.run, sam_checkpoint=args.sam_checkpoint)
    try:
        server = FieldServer(field, (args.host, args.port), quiet=args.quiet)
    except OSError as e:
        raise FeatgsError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    if not _is_loopback(args.host):
        print(f"featgs: warning: listening on {args.host}: anyone who can reach it can query and edit this run",
              file=sys.stderr)
    prompts = "SAM's mask decoder" if field.mask_decoder is not None else "feature affinity"
    print(f"serving {args.run} ({field.num_gaussians} Gaussians; prompts by {prompts}) on {server.url}  "
          f"(API: {server.url}/openapi.json; Ctrl-C stops)", flush=True)
    # Honour Ctrl-C even when the parent shell started us with SIGINT ignored (background jobs).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever()
    finally:
        signal.signal(signal.SIGINT, previous)
        server.server_close()
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
