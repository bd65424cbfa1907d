"""The ``featgs`` command line.

Each command lives in its own module under :mod:`featgs.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code. User errors (:class:`FeatgsError`) become one
line on stderr and exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from featgs import __version__
from featgs.errors import FeatgsError

# Imported lazily so that `featgs --help` stays fast and one broken command cannot hide others.
COMMAND_MODULES = [
    "featgs.commands.render",
    "featgs.commands.scene",
    "featgs.commands.data",
    "featgs.commands.train",
    "featgs.commands.features",
    "featgs.commands.demo",
    "featgs.commands.view",
    "featgs.commands.query",
    "featgs.commands.segment",
    "featgs.commands.edit",
    "featgs.commands.serve",
    "featgs.commands.process",
    "featgs.commands.run",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors also exit 2, on one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="featgs",
        description="Distil 2D foundation-model features (SAM, CLIP, labels) into 3D Gaussian Splatting scenes.",
    )
    parser.add_argument("--version", action="version", version=f"featgs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FeatgsError as e:
        print(f"featgs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featgs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `featgs ... | head`: the reader has gone, nothing to report
        return _reader_gone()


def _reader_gone() -> int:
    """Point stdout at /dev/null (so the interpreter's last flush cannot fail again) and return
    the shell's code for a process ended by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


def entry() -> None:
    """The console script: :func:`main`, then exit with its code.

    After Ctrl-C the process ends without finalising the interpreter: tearing down torch's
    native state while other threads (a server's handlers, a viewer's event loop) were cut off
    mid-call can abort with "terminate called without an active exception" (exit -6 instead of
    130). Everything featgs writes is written atomically, so nothing is lost by skipping it.
    """
    code = main()
    try:
        sys.stdout.flush()  # what is still buffered goes now, while a closed pipe can be handled
    except BrokenPipeError:
        code = _reader_gone()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
