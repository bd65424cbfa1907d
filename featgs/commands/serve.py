"""``featgs serve``: the HTTP JSON API over one run."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import signal
import sys
from pathlib import Path

from featgs.commands.threads import add_threads_argument, apply_threads, spare_one_core
from featgs.errors import FeatgsError

# Defaults of the limits; written here, not imported from featgs.server, so that `featgs --help`
# does not load FastAPI and torch.
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 30.0  # seconds
MAX_RENDER_PAIRS = 20_000_000  # featgs.query.field.MAX_RENDER_PAIRS: ~2 GB of renderer memory

DESCRIPTION = """\
Serve a trained run over HTTP (JSON in, JSON or PNG out):

  GET  /health          liveness, label names, number of views
  GET  /views           the run's views, for cameras given as {"view": I, "split": "test"}
  GET  /openapi.json    the full API with request schemas
  POST /query           {"text": "red mug"} -> num_selected, bbox, centroid, ...
  POST /segment         {"camera": {"view": 0}, "labels": [...]} -> label map (base64 PNG), counts
  POST /prompt          {"camera": ..., "points": [[x, y]], "box": [x0, y0, x1, y1]} -> mask, selection
  POST /edit            {"selection": {"text": "mug"}, "op": "delete", "name": "no_mug"} -> RUN/edits/no_mug.ply
                        (without "name": the edited PLY itself, its features decoded: one self-contained file)
  POST /render          {"camera": ..., "mode": "rgb|depth|features|relevancy|segmentation|selection"} -> PNG

A camera is {"view": I, "split": "test"|"train"} or {"width", "height", "K", "camtoworld"}
(OpenCV, at most 2048x2048). Bad requests get a 4xx answer {"error": "..."}; /docs is the
API in a browser. A view whose render would list more (tile, Gaussian) pairs than
--max-render-pairs (about 100 bytes each; large Gaussians seen up close make many) is
refused with 422 before any memory is taken.

The API has no authentication. It binds to 127.0.0.1 unless --host says otherwise, and it
refuses what a web page on another site could make a browser send: POST bodies must be
Content-Type: application/json (415), a request whose Origin is not this server's own is
refused (403; --allow-origin lets a site in, with CORS headers), and so is a Host header
that does not name this server (403: a DNS rebinding guard). The names accepted are
localhost, 127.0.0.1, ::1 and the --host address, plus each --allow-host; a wildcard --host
(0.0.0.0, ::) accepts any.
"""

EPILOG = """\
examples:
  featgs serve out/demo/run
  curl -s localhost:8000/query -H 'Content-Type: application/json' -d '{"text": "cup"}'
  curl -s localhost:8000/render -H 'Content-Type: application/json' \\
       -d '{"camera": {"view": 0}, "mode": "relevancy", "text": "fruit"}' > heat.png
  featgs serve RUN --allow-origin http://localhost:5173    # a web app on that origin may call it
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP JSON API: query, segment, prompt, edit, render",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", type=Path, help="run folder made by `featgs train` or `featgs demo`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind, IPv4 or IPv6 (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--sam-checkpoint", metavar="PATH", type=Path,
                   help="runs with SAM features: prompts go through SAM's mask decoder with these weights "
                        "(default: the checkpoint the run was trained with, if still there; else feature affinity)")
    p.add_argument("--allow-origin", metavar="ORIGIN", action="append", default=[],
                   help="let web pages from ORIGIN (scheme://host[:port], e.g. http://localhost:5173) call the API "
                        "and read its answers; repeatable (default: only pages this server serves)")
    p.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                   help="accept requests addressed to NAME (the Host header, e.g. a name behind a proxy); "
                        "repeatable; '*' accepts any")
    p.add_argument("--max-connections", metavar="N", type=int, default=MAX_CONNECTIONS,
                   help="connections served at once; a request beyond them gets 503 (default: %(default)s)")
    p.add_argument("--request-timeout", metavar="SECONDS", type=float, default=REQUEST_TIMEOUT,
                   help="time a client has to send a request body, all of it (default: %(default)g); "
                        "an idle connection is closed after 5 s")
    p.add_argument("--max-render-pairs", metavar="N", type=int, default=MAX_RENDER_PAIRS,
                   help="refuse (422) a render that would list more (tile, Gaussian) pairs than N, about 100 bytes "
                        "of memory each, while the run is locked (default: %(default)s, about 2 GB)")
    add_threads_argument(p, default=spare_one_core(), why="all cores but one, which stays free for HTTP, "
                                                         "JSON and the clients")
    p.add_argument("--quiet", action="store_true", help="no request log")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from featgs.query import FeatureField
    from featgs.server import FieldServer

    if not 0 <= args.port <= 65535:
        raise FeatgsError(f"--port must be in 0..65535, got {args.port}")
    if args.max_connections < 1:
        raise FeatgsError(f"--max-connections must be at least 1, got {args.max_connections}")
    if not 0 < args.request_timeout <= 3600:
        raise FeatgsError(f"--request-timeout must be in (0, 3600] seconds, got {args.request_timeout:g}")
    if args.max_render_pairs < 1:
        raise FeatgsError(f"--max-render-pairs must be at least 1, got {args.max_render_pairs}")
    origins = [_origin(o) for o in args.allow_origin]
    apply_threads(args)
    field = FeatureField.load(args.run, sam_checkpoint=args.sam_checkpoint, max_render_pairs=args.max_render_pairs)
    try:
        server = FieldServer(field, (args.host, args.port), quiet=args.quiet, allow_hosts=args.allow_host,
                             allow_origins=origins, max_connections=args.max_connections,
                             request_timeout=args.request_timeout)
    except OSError as e:
        raise FeatgsError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    if not is_loopback(args.host):
        print(f"featgs: warning: listening on {args.host}: anyone who can reach it can query and edit this run",
              file=sys.stderr)
    prompts = "SAM's mask decoder" if field.mask_decoder is not None else "feature affinity"
    print(f"serving {args.run} ({field.num_gaussians} Gaussians; prompts by {prompts}) on {server.url}  "
          f"(API: {server.url}/openapi.json; Ctrl-C stops)", flush=True)
    # The request log and uvicorn's warnings on stderr, for as long as this command serves.
    log = logging.getLogger("uvicorn")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # not its start and stop chatter
    # Honour Ctrl-C even when the parent shell started us with SIGINT ignored (background jobs):
    # uvicorn catches SIGINT while it serves and raises it again through this handler once it
    # has stopped, which makes the KeyboardInterrupt that featgs.cli turns into exit code 130.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever()
    finally:
        signal.signal(signal.SIGINT, previous)
        log.removeHandler(handler)
        server.close()
    return 0


def _origin(value: str) -> str:
    """``scheme://host[:port]`` as browsers send it in Origin (lower case, no trailing slash)."""
    origin = value.strip().rstrip("/").lower()
    if not re.fullmatch(r"https?://[^/\s@]+", origin):
        raise FeatgsError(f"--allow-origin takes scheme://host[:port] (e.g. http://localhost:5173), got {value!r}")
    return origin


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost): no warning then."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
