"""``--threads``: how many CPU threads torch's operators use in one featgs process.

torch starts one thread per core. On a small machine whose cores are also busy (a browser,
a second server, a test suite), its threads wait on each other: measured on a 2-core
machine with one core busy, a 256-pixel render took 3x longer on 2 threads than on 1, while
on an idle machine 2 threads were 1.4x faster than 1. So each command picks its default for
how it is used, and says so in its --help.
"""

from __future__ import annotations

import argparse
import os

from featgs.errors import FeatgsError


def spare_one_core() -> int:
    """All cores but one (at least 1): for processes that share the machine (servers)."""
    return max(1, (os.cpu_count() or 1) - 1)


def add_threads_argument(parser: argparse.ArgumentParser, *, default: int | None, why: str) -> None:
    """Add ``--threads N``; ``default`` None keeps torch's own (one per core). ``why`` ends the help."""
    shown = "one per core" if default is None else str(default)
    parser.add_argument("--threads", type=int, default=default, metavar="N",
                        help=f"torch CPU threads (default {shown} here: {why})")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's intra-op threads from ``args.threads`` (None: leave torch's default)."""
    if args.threads is None:
        return
    if args.threads < 1:
        raise FeatgsError(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
