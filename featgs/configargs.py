"""Surface a config dataclass on the command line: one ``--flag`` per field.

A field's ``metadata`` may hold ``help`` (shown by --help), ``choices``, and the range a value
must lie in: ``min``/``max`` (inclusive), ``above``/``below`` (exclusive); numbers must also be
finite. :func:`check_ranges` enforces them (configs call it from ``__post_init__``). Field names
map to flags with dashes (``feature_dim`` -> ``--feature-dim``); booleans become ``--x/--no-x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Optional, Sequence, Type, TypeVar

from featgs.errors import FeatgsError

T = TypeVar("T")
_BOUNDS = (("min", lambda v, b: v >= b, ">="), ("max", lambda v, b: v <= b, "<="),
           ("above", lambda v, b: v > b, ">"), ("below", lambda v, b: v < b, "<"))


def check_ranges(config: Any) -> None:
    """Raise a one-line :class:`FeatgsError` naming the flag if a numeric field of dataclass
    ``config`` is not finite or lies outside its metadata's range (None values are skipped)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flag = "--" + f.name.replace("_", "-")
        if not math.isfinite(value):
            raise FeatgsError(f"{flag}: expected a finite number, got {value}")
        for key, ok, sign in _BOUNDS:
            bound = f.metadata.get(key)
            if bound is not None and not ok(value, bound):
                raise FeatgsError(f"{flag}: expected a number {sign} {bound:g}, got {value:g}")


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: Type[Any], *, skip: Sequence[str] = (), title: Optional[str] = None
) -> None:
    """Add a flag for every field of dataclass ``cls`` (nested dataclasses are skipped)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{help_text} (default: {default})")
        elif typing.get_origin(tp) in (tuple, list):
            elem = typing.get_args(tp)[0]
            group.add_argument(flag, dest=f.name, type=_list_of(elem), default=None, metavar="A,B,...",
                               help=f"{help_text} (default: {','.join(map(str, default))})")
        else:
            group.add_argument(flag, dest=f.name, type=tp, default=None, choices=f.metadata.get("choices"),
                               help=f"{help_text} (default: {default})")


def _list_of(elem):
    def parse(text: str):
        try:
            return tuple(elem(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {elem.__name__} values, got {text!r}")

    parse.__name__ = f"list of {elem.__name__}"
    return parse


def config_from_args(cls: Type[T], args: argparse.Namespace, base: Optional[T] = None, **overrides: Any) -> T:
    """``base`` (or the defaults) with every flag the user gave applied."""
    cfg = base if base is not None else cls()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    given.update(overrides)
    return dataclasses.replace(cfg, **given)
