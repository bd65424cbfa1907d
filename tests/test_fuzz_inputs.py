"""Fuzzing what featgs reads from users (issue "Hardening"): seeded, deterministic mutations of
valid files and requests, and some pure garbage.

Each input kind starts from VALID input made by the builders (tests/data_builders.py, a tiny
trained run), so that most cases are near-valid and reach past the first check:

- PLY point clouds (``points3D.ply`` of a transforms.json dataset), binary and ASCII;
- Gaussian PLYs (a run's ``point_cloud.ply`` and its decoder) and camera JSON, for
  ``featgs render PLY --camera CAM.json``;
- COLMAP models (``sparse/0``), ``.bin`` and ``.txt``;
- ``transforms.json``;
  all four read through ``featgs.cli.main`` in this process, as ``featgs data info DATA`` or
  ``featgs render``: every case ends in exit 0, or exit 2 with exactly one stderr line starting
  ``featgs: error:``; never an exception, never a changed input file (every input file is
  hashed before and after);
- HTTP request bodies, headers and methods against a real server on 127.0.0.1: every answer is
  a 2xx or a 4xx with featgs's one-line JSON error, never a 5xx nor a dropped connection, and
  the server still answers /health at the end.

The generator is ``random.Random(SEED + k)`` per kind: the same cases on every run, each with an
id (``kind-NNN:what``) that names the mutation. A failing test lists every failing case.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import math
import random
import shutil
import socket
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from plyfile import PlyData

from featgs.cli import main
from featgs.query import FeatureField
from featgs.query import field as field_module
from featgs.server import FieldServer
from data_builders import make_tabletop, to_colmap

SEED = 20_240_611
CASES = {"ply-points": 110, "ply-gaussians": 70, "camera": 60, "colmap-bin": 60, "colmap-txt": 60,
         "transforms": 80, "http": 170}

# -- hostile values ------------------------------------------------------------------------------

HUGE_COUNTS = [10**13, 10**20, 2**63, 2**64 - 1, 2**31, 2**32 + 1, 10**9]
# JSON text a value may be replaced with. Raw tokens (not JSON, or beyond what json.dumps writes)
# are spliced into the text; no integer lies in 65..2**20 (a camera that size would really render).
RAW_VALUES = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, "-" + "9" * 5000, "1e-400",
              "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000]
PLAIN_VALUES = [10**20, 10**13, 2**64, 2**31, -1, 0, 1, 3, 0.5, -0.0, 1e308, -1e308, 5e-324, "", "x", "16", "x" * 5000,
                "../../etc/hostname", "/etc/hostname", "images", [], {}, None, True, False, [1, 2], [[1, 2], [3]],
                {"a": 1}, list(range(10_000))]
TXT_TOKENS = ["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1" + "0" * 400, "1e-400", "-1", "0", "2147483648",
              "4294967297", "18446744073709551616", "99999999999999999999", "abc", "0x10", "1.5", "", "\u221e",
              "-0", "1e308", "9" * 5000]


def _pick_value(rng: random.Random):
    """(description, value, raw JSON text or None)."""
    if rng.random() < 0.3:
        raw = rng.choice(RAW_VALUES)
        return f"raw {raw[:12]}", None, raw
    value = rng.choice(PLAIN_VALUES)
    return f"value {json.dumps(value)[:24]}", value, None


# -- JSON mutations (transforms.json, camera files, HTTP bodies) -------------------------------------

def _nodes(obj, path=()) -> list[tuple]:
    """Paths to every value in ``obj`` (the root is ``()``)."""
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, path + (i,))
    return out


def _get(obj, path):
    for part in path:
        obj = obj[part]
    return obj


def _dumps(obj, raws: dict[str, str]) -> str:
    text = json.dumps(obj)  # NaN/Infinity of Python floats become JSON's lenient tokens
    for marker, raw in raws.items():
        text = text.replace(json.dumps(marker), raw)
    return text


def _json_structure_mutation(rng: random.Random, doc) -> tuple[str, str]:
    """Change one or two places in ``doc`` (a deep copy is made): a value replaced by a hostile
    one, a key removed or added, a list shortened or lengthened."""
    doc = json.loads(json.dumps(doc))
    raws: dict[str, str] = {}
    what = []
    for _ in range(rng.choice((1, 1, 1, 2))):
        paths = _nodes(doc)
        # a depth first (matrices do not crowd out keys); the whole document seldom
        depth = rng.choice(sorted({len(p) for p in paths} - {0}) or [0]) if rng.random() > 0.05 else 0
        path = rng.choice([p for p in paths if len(p) == depth])
        op = rng.random()
        where = "/".join(map(str, path)) or "<root>"
        parent = _get(doc, path[:-1]) if path else None
        if op < 0.55 or not path:
            label, value, raw = _pick_value(rng)
            if raw is not None:
                marker = f"@@raw{len(raws)}@@"
                raws[marker] = raw
                value = marker
            if path:
                parent[path[-1]] = value
            else:
                doc = value
            what.append(f"{where}={label}")
            if not path:
                break
        elif op < 0.75:
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
            what.append(f"drop {where}")
        elif op < 0.88:
            node = _get(doc, path)
            if isinstance(node, dict):
                node[rng.choice(["extra", "frames", "w", "K", "view", "text", "camera", "name", "__proto__"])] = \
                    rng.choice(PLAIN_VALUES)
                what.append(f"add key in {where}")
            elif isinstance(node, list):
                node.append(rng.choice([0.0, 1, "x", None, [0.0] * 4, {}]))
                what.append(f"append to {where}")
            else:
                parent[path[-1]] = [node]
                what.append(f"wrap {where} in a list")
        else:
            node = _get(doc, path)
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                parent[path[-1]] = rng.choice([str(node), [node], {"value": node}, node * 1e300, -node, node + 0.5])
                what.append(f"retype {where}")
            else:
                parent[path[-1]] = rng.choice([1.0, "1", [], None])
                what.append(f"retype {where}")
    return "; ".join(what), _dumps(doc, raws)


def _text_mutation(rng: random.Random, text: str) -> tuple[str, bytes]:
    """Byte-level damage to JSON text."""
    data = text.encode()
    op = rng.randrange(9)
    if op == 0:
        cut = rng.randrange(len(data) + 1)
        return f"truncated at {cut}", data[:cut]
    if op == 1:
        i = rng.randrange(len(data))
        return f"byte {i} -> punctuation", data[:i] + rng.choice(b'{}[],:"\\0-.eE').to_bytes(1, "little") + data[i + 1:]
    if op == 2:
        i = rng.randrange(len(data))
        return f"byte {i} deleted", data[:i] + data[i + 1:]
    if op == 3:
        i = rng.randrange(len(data))
        return f"junk inserted at {i}", data[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))) + data[i:]
    if op == 4:
        return "utf-8 BOM", b"\xef\xbb\xbf" + data
    if op == 5:
        return "latin-1 bytes", data.replace(b'"', b'"\xe9', 1)
    if op == 6:
        return "trailing garbage", data + b" }]garbage"
    if op == 7:
        return "pure garbage", bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    return "empty", b""


def _json_cases(rng: random.Random, base, n: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            what, text = _json_structure_mutation(rng, base)
            out.append((what, text.encode()))
        else:
            out.append(_text_mutation(rng, json.dumps(base, indent=rng.choice((None, 1)))))
    return out


# -- PLY mutations ----------------------------------------------------------------------------------

PLY_TYPES = ["char", "uchar", "short", "ushort", "int", "uint", "float", "double", "int8", "uint8", "int16",
             "uint16", "int32", "uint32", "float32", "float64", "int64", "bogus", "list uchar float", "list uint int",
             "list uchar uchar", "list int float"]
_SIZES = {"char": "b", "uchar": "B", "short": "h", "ushort": "H", "int": "i", "uint": "I", "float": "f", "double": "d",
          "int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f",
          "float64": "d"}


def _split_ply(data: bytes) -> tuple[list[bytes], bytes]:
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].split(b"\n")[:-1], data[end:]


def _join_ply(lines: list[bytes], body: bytes) -> bytes:
    return b"\n".join(lines) + b"\n" + body


def _ply_value_mutation(rng: random.Random, lines: list[bytes], body: bytes, ascii_: bool) -> tuple[str, bytes]:
    """A NaN, infinity or out-of-range value in one vertex's property (header unchanged)."""
    props = [line.split()[1:] for line in lines if line.startswith(b"property ")]
    count = int(next(line for line in lines if line.startswith(b"element vertex")).split()[2])
    row, col = rng.randrange(count), rng.randrange(len(props))
    name = props[col][1].decode()
    if ascii_:
        rows = body.split(b"\n")
        tokens = rows[row].split(b" ")
        token = rng.choice(TXT_TOKENS)
        tokens[col] = token.encode()
        rows[row] = b" ".join(tokens)
        return f"ascii {name}[{row}]={token[:10]!r}", _join_ply(lines, b"\n".join(rows))
    fmts = [_SIZES[p[0].decode()] for p in props]
    offset = row * struct.calcsize("<" + "".join(fmts)) + struct.calcsize("<" + "".join(fmts[:col]))
    kind = fmts[col]
    if kind in "fd":
        value = rng.choice([math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45])
        packed = struct.pack("<" + kind, value)
    else:
        value = rng.choice([0, 255, 127])
        packed = struct.pack("<" + kind, value)
    return f"binary {name}[{row}]={value}", _join_ply(lines, body[:offset] + packed + body[offset + len(packed):])


def _ply_mutation(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    lines, body = _split_ply(data)
    ascii_ = lines[1].startswith(b"format ascii")
    op = rng.randrange(16)
    prop_rows = [i for i, line in enumerate(lines) if line.startswith(b"property ")]
    vertex_row = next(i for i, line in enumerate(lines) if line.startswith(b"element vertex"))
    if op == 0:
        count = rng.choice(HUGE_COUNTS + [0, -1, "abc", "1e3", "", "50.0", "0x10"])
        lines[vertex_row] = b"element vertex " + str(count).encode()
        return f"vertex count {str(count)[:22]}", _join_ply(lines, body)
    if op == 1:
        count = int(lines[vertex_row].split()[2])
        new = count + rng.choice([-1, 1, 10, -count // 2])
        lines[vertex_row] = b"element vertex %d" % new
        return f"vertex count {count} -> {new}", _join_ply(lines, body)
    if op == 2:
        i = rng.choice(prop_rows)
        t = rng.choice(PLY_TYPES)
        name = lines[i].split()[-1]
        lines[i] = b"property " + t.encode() + b" " + name
        return f"property {name.decode()} as {t}", _join_ply(lines, body)
    if op == 3:
        i = rng.choice(prop_rows)
        name = lines.pop(i)
        return f"dropped {name.decode()}", _join_ply(lines, body)
    if op == 4:
        i = rng.choice(prop_rows)
        dup = rng.choice([lines[i], b"property float " + rng.choice([b"x", b"extra", b"feat_99", b"f_rest_0"]),
                          b"property list uchar int vertex_indices"])
        lines.insert(rng.choice(prop_rows), dup)
        return f"extra property line {dup.decode()}", _join_ply(lines, body)
    if op == 5:
        fmt = rng.choice([b"format ascii 1.0", b"format binary_little_endian 1.0", b"format binary_big_endian 1.0",
                          b"format binary_little_endian 2.0", b"format ascii", b"format bogus 1.0", b""])
        lines[1] = fmt
        return f"format line {fmt.decode()!r}", _join_ply(lines, body)
    if op == 6:
        return "no end_header", b"\n".join(lines[:-1]) + b"\n" + body
    if op == 7:
        element = rng.choice([b"element face %d" % rng.choice(HUGE_COUNTS), b"element face 3",
                              b"element vertex 5", b"element", b"element vertex"])
        lines.insert(rng.choice([vertex_row, len(lines) - 1]), element)
        return f"extra element line {element.decode()}", _join_ply(lines, body)
    if op == 8:
        lines[vertex_row] = lines[vertex_row].replace(b"vertex", rng.choice([b"vertexx", b"Vertex", b"points"]))
        return "vertex element renamed", _join_ply(lines, body)
    if op == 9:
        first = rng.choice([b"PLY", b"ply junk", b"", b"\xffply"])
        return f"first line {first!r}", _join_ply([first] + lines[1:], body)
    if op == 10:
        lines.insert(2, b"comment " + bytes(rng.randrange(128, 256) for _ in range(8)))
        return "non-ASCII comment", _join_ply(lines, body)
    if op == 11:
        return "CRLF header", b"\r\n".join(lines) + b"\r\n" + body
    if op in (12, 13):
        return _ply_value_mutation(rng, lines, body, ascii_)
    if op == 14:
        cut = rng.randrange(len(data))
        return f"truncated at {cut} of {len(data)}", data[:cut]
    # a few bytes flipped anywhere
    out = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return "bytes flipped", bytes(out)


def _garbage_ply(rng: random.Random) -> tuple[str, bytes]:
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
    head = b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nend_header\n"
    ascii_head = b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    return rng.choice([("garbage", junk), ("ply then garbage", b"ply\n" + junk), ("header only", head),
                       ("ascii header, no data", ascii_head), ("empty", b"")])


def _ply_cases(rng: random.Random, bases: list[bytes], n: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(n):
        if rng.random() < 0.06:
            out.append(_garbage_ply(rng))
            continue
        base = rng.choice(bases)
        what, data = _ply_mutation(rng, base)
        if rng.random() < 0.2:  # and a second one
            try:
                more, data = _ply_mutation(rng, data)
                what += "; " + more
            except (ValueError, StopIteration, IndexError, KeyError):  # the first broke the header's shape
                pass
        out.append((("ascii PLY: " if b"format ascii" in base[:40] else "") + what, data))
    return out


def _ascii_ply(data: bytes, path: Path) -> bytes:
    """The same PLY in ASCII."""
    path.write_bytes(data)
    ply = PlyData.read(str(path), mmap=False)  # (a mapped file must not be written over)
    ply.text = True
    out = path.with_suffix(".ascii.ply")
    ply.write(str(out))
    return out.read_bytes()


# -- COLMAP mutations -----------------------------------------------------------------------------

def _colmap_fields(files: dict[str, bytes]) -> list[tuple[str, int, str, str]]:
    """(file, offset, struct format, label) of every field of the binary model the builder wrote."""
    out = []
    data = files["cameras.bin"]
    out.append(("cameras.bin", 0, "<Q", "camera count"))
    pos = 8
    for c in range(struct.unpack_from("<Q", data)[0]):
        for fmt, label in (("<i", "camera_id"), ("<i", "model"), ("<Q", "width"), ("<Q", "height")):
            out.append(("cameras.bin", pos, fmt, f"camera {c} {label}"))
            pos += struct.calcsize(fmt)
        for k in range(4):  # PINHOLE: fx fy cx cy
            out.append(("cameras.bin", pos, "<d", f"camera {c} param {k}"))
            pos += 8
    data = files["images.bin"]
    out.append(("images.bin", 0, "<Q", "image count"))
    pos = 8
    for i in range(struct.unpack_from("<Q", data)[0]):
        out.append(("images.bin", pos, "<i", f"image {i} id"))
        pos += 4
        for k in range(7):
            out.append(("images.bin", pos, "<d", f"image {i} {'qvec' if k < 4 else 'tvec'}[{k % 4 if k < 4 else k - 4}]"))
            pos += 8
        out.append(("images.bin", pos, "<i", f"image {i} camera_id"))
        pos += 4
        pos = data.index(b"\0", pos) + 1
        out.append(("images.bin", pos, "<Q", f"image {i} 2D point count"))
        pos += 8 + 24
    data = files["points3D.bin"]
    out.append(("points3D.bin", 0, "<Q", "point count"))
    pos = 8
    for p in range(struct.unpack_from("<Q", data)[0]):
        out.append(("points3D.bin", pos, "<Q", f"point {p} id"))
        for k in range(3):
            out.append(("points3D.bin", pos + 8 + 8 * k, "<d", f"point {p} xyz[{k}]"))
        out.append(("points3D.bin", pos + 35, "<d", f"point {p} error"))
        out.append(("points3D.bin", pos + 43, "<Q", f"point {p} track length"))
        pos += 51
    return out


def _hostile_field(rng: random.Random, fmt: str):
    if fmt == "<Q":  # 10**20 does not fit: what is left of it does
        return rng.choice(HUGE_COUNTS + [0, 1, 2, 3, 7, 2**64 - 1]) % 2**64
    if fmt == "<i":
        return rng.choice([-1, 0, 1, 2, 5, 6, 11, 99, 2**31 - 1, -2**31])
    return rng.choice([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, -1e308, 5e-324, 1e-300])


def _colmap_bin_case(rng: random.Random, files: dict[str, bytes], fields) -> tuple[str, dict[str, bytes | None]]:
    op = rng.randrange(10)
    if op < 5:  # one to three fields
        changed = dict(files)
        what = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            name, pos, fmt, label = rng.choice(fields)
            value = _hostile_field(rng, fmt)
            data = changed[name]
            changed[name] = data[:pos] + struct.pack(fmt, value) + data[pos + struct.calcsize(fmt):]
            what.append(f"{label}={value}")
        return "; ".join(what), {k: v for k, v in changed.items() if v != files[k]}
    name = rng.choice(sorted(files))
    data = files[name]
    if op == 5:
        cut = rng.randrange(len(data))
        return f"{name} truncated at {cut} of {len(data)}", {name: data[:cut]}
    if op == 6:
        i, j = sorted(rng.randrange(len(data)) for _ in range(2))
        return f"{name} bytes {i}..{j} deleted", {name: data[:i] + data[j:]}
    if op == 7 and name == "images.bin":
        start = 8 + 4 + 7 * 8 + 4  # the first image's name
        nul = data.index(b"\0", start)
        what, changed = rng.choice([("name without its NUL", data[:nul] + data[nul + 1:]),
                                    ("long name", data[:start] + b"x" * 10_000 + data[nul:]),
                                    ("name ../../x", data[:start] + b"../../x" + data[nul:]),
                                    ("empty name", data[:start] + data[nul:])])
        return f"images.bin {what}", {name: changed}
    if op == 8:
        return rng.choice([(f"{name} removed", {name: None}), (f"{name} empty", {name: b""}),
                           (f"{name} garbage", {name: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))})])
    out = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return f"{name} bytes flipped", {name: bytes(out)}


def _colmap_txt_case(rng: random.Random, files: dict[str, str]) -> tuple[str, dict[str, bytes | None]]:
    name = rng.choice(sorted(files))
    lines = files[name].split("\n")
    data = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    op = rng.randrange(12)
    what = name
    if op < 4 and data:  # a token
        i = rng.choice(data)
        tokens = lines[i].split(" ")
        j = rng.randrange(len(tokens))
        token = rng.choice(TXT_TOKENS)
        tokens[j] = token
        lines[i] = " ".join(tokens)
        what += f" line {i} token {j} -> {token[:12]!r}"
    elif op == 4 and data:
        i = rng.choice(data)
        tokens = lines[i].split(" ")
        if rng.random() < 0.5:
            tokens.pop(rng.randrange(len(tokens)))
            what += f" line {i} one token fewer"
        else:
            tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(["1", "0.5", "x"]))
            what += f" line {i} one token more"
        lines[i] = " ".join(tokens)
    elif op == 5 and name == "cameras.txt":
        model = rng.choice(["FOO", "OPENCV_FISHEYE", "FULL_OPENCV", "FOV", "THIN_PRISM_FISHEYE", "pinhole", "",
                            "SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "99"])
        tokens = lines[data[0]].split(" ")
        tokens[1] = model
        lines[data[0]] = " ".join(tokens)
        what += f" model {model!r}"
    elif op == 6 and name == "images.txt" and any(len(lines[i].split(" ")) >= 10 for i in data):
        i = rng.choice([i for i in data if len(lines[i].split(" ")) >= 10])  # a pose line
        tokens = lines[i].split(" ")
        tokens[rng.choice([0, 8])] = rng.choice(["0", "-1", "999", "2147483648", "1.5", "x"])
        lines[i] = " ".join(tokens)
        what += f" line {i} bad id"
    elif op == 7:
        i = rng.randrange(len(lines))
        lines.pop(i)
        what += f" line {i} removed"
    elif op == 8:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[rng.randrange(len(lines))])
        what += f" line {i} duplicated"
    elif op == 9:
        text = "\n".join(lines)
        cut = rng.randrange(len(text) + 1)
        return f"{name} truncated at {cut}", {name: text[:cut].encode()}
    elif op == 10:
        return rng.choice([
            (f"{name} non-UTF-8", {name: "\n".join(lines).encode().replace(b" ", b"\xff", 1)}),
            (f"{name} CRLF", {name: "\r\n".join(lines).encode()}),
            (f"{name} tabs", {name: "\n".join(lines).replace(" ", "\t").encode()}),
            (f"{name} removed", {name: None}),
            (f"{name} empty", {name: b""}),
            (f"{name} garbage", {name: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))}),
        ])
    else:
        i = rng.choice(data) if data else 0
        lines.insert(i, rng.choice(["1 2 3", "# comment", "", " ", "1 PINHOLE 16 16 1 1 8 8",
                                    "1.5 2.5 -1 " * 20_000, "\u00e9\u00e9"]))
        what += f" line inserted at {i}"
    return what, {name: "\n".join(lines).encode()}


# -- running cases -----------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


# warnings Python does not print unless asked to
_UNSHOWN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def _cli(capsys, args: list[str]) -> tuple[int | None, str | None]:
    """(exit code, None if ``featgs ARGS`` ended as it should: exit 0, or exit 2 with one
    line; else what went wrong)."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(args)
        except BaseException as e:  # noqa: BLE001 - the fuzzer reports every escape
            captured = capsys.readouterr()
            return None, f"raised {e.__class__.__name__}: {str(e)[:200]} (stderr {captured.err[-200:]!r})"
    captured = capsys.readouterr()
    shown = [w for w in caught if not issubclass(w.category, _UNSHOWN)]
    if shown:  # the shell would print them: more lines on stderr
        w = shown[0]
        return code, (f"warning on stderr: {w.category.__name__}: {str(w.message)[:120]} "
                      f"({Path(w.filename).name}:{w.lineno})")
    if "Traceback" in captured.err or "Traceback" in captured.out:
        return code, f"traceback printed: {captured.err[-300:]!r}"
    if code == 0:
        return code, None
    lines = captured.err.strip().splitlines()
    if code != 2:
        return code, f"exit {code}: {captured.err[-200:]!r}"
    if len(lines) != 1 or not lines[0].startswith("featgs: error: "):
        return code, f"exit 2 but stderr is {captured.err[-300:]!r}"
    return code, None


def _apply(root: Path, changes: dict[str, bytes | None]) -> None:
    for name, data in changes.items():
        path = root / name
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(data)


def _fuzz_folder(capsys, pristine: Path, work: Path, cases, args: Callable[[Path], list[str]],
                 rel: Callable[[str], str] = lambda name: name) -> list[str]:
    """Run every (id, {file: bytes or None}) case on a copy of ``pristine``; the failures."""
    failures, codes = [], collections.Counter()
    shutil.copytree(pristine, work)
    clean = _tree(work)
    for case_id, changes in cases:
        changes = {rel(k): v for k, v in changes.items()}
        _apply(work, changes)
        before = _tree(work)
        code, problem = _cli(capsys, args(work))
        codes[code] += 1
        after = _tree(work)
        if problem is None and after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            problem = f"input files changed: {[name for name, _ in changed][:5]}"
        if problem:
            failures.append(f"{case_id}: {problem}")
        if _tree(work) != clean:  # back to the valid files for the next case
            shutil.rmtree(work)
            shutil.copytree(pristine, work)
    if not codes[0] or codes[2] < len(cases) // 2:  # near-valid cases pass; most are refused
        failures.append(f"exit codes {dict(codes)}: the cases do not explore past the first check, or pass it all")
    return failures


def _ids(kind: str, cases) -> list[tuple[str, object]]:
    return [(f"{kind}-{i:03d}:{what}", payload) for i, (what, payload) in enumerate(cases)]


# -- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Nothing goes to the real per-user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz-data")
    src = make_tabletop(root / "transforms", size=16, views=4, test_views=1, points=40)
    return {"transforms": src, "colmap-bin": to_colmap(src, root / "colmap-bin", binary=True),
            "colmap-txt": to_colmap(src, root / "colmap-txt", binary=False)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run trained for two steps on a 16-pixel tabletop (labels teacher: text queries work;
    16-dim features: the PLY has a decoder beside it). Seconds, not minutes."""
    root = tmp_path_factory.mktemp("fuzz-run")
    data = make_tabletop(root / "data", size=16, views=4, test_views=1, points=40)
    threads = torch.get_num_threads()
    try:
        code = main(["train", str(data), "--out", str(root / "run"), "--iters", "2", "--feature-dim", "16",
                     "--checkpoint-every", "1000", "--quiet", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return root / "run"


# -- the tests --------------------------------------------------------------------------------------------

def test_fuzz_point_cloud_ply(datasets, tmp_path, capsys):
    base = (datasets["transforms"] / "points3D.ply").read_bytes()
    rng = random.Random(SEED + 1)
    cases = _ids("ply-points", _ply_cases(rng, [base, _ascii_ply(base, tmp_path / "a.ply")], CASES["ply-points"]))
    failures = _fuzz_folder(capsys, datasets["transforms"], tmp_path / "ds",
                            [(i, {"points3D.ply": data}) for i, data in cases],
                            lambda root: ["data", "info", str(root)])
    assert not failures, "\n".join(failures)


def test_fuzz_gaussian_ply_and_camera_for_render(tiny_run, tmp_path, capsys):
    field = FeatureField.load(tiny_run, device="cpu")
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    for name in ("point_cloud.ply", "point_cloud.decoder.safetensors"):
        shutil.copyfile(tiny_run / name, pristine / name)
    camera = field.camera(0).to_dict()
    (pristine / "cam.json").write_text(json.dumps(camera))
    out = tmp_path / "out" / "x.png"
    args = lambda root: ["render", str(root / "point_cloud.ply"), "--camera", str(root / "cam.json"),
                         "--out", str(out), "--backend", "torch"]
    assert _cli(capsys, args(pristine)) == (0, None) and out.is_file()  # the base case renders

    rng = random.Random(SEED + 2)
    base = (pristine / "point_cloud.ply").read_bytes()
    plys = _ply_cases(rng, [base, _ascii_ply(base, tmp_path / "a.ply")], CASES["ply-gaussians"] - 8)
    decoder = (pristine / "point_cloud.decoder.safetensors").read_bytes()
    decoders = [("decoder truncated", decoder[:rng.randrange(len(decoder))]), ("decoder empty", b""),
                ("decoder garbage", bytes(rng.randrange(256) for _ in range(64))),
                ("decoder header length huge", struct.pack("<Q", 2**63) + decoder[8:]),
                ("decoder header length 10**13", struct.pack("<Q", 10**13) + decoder[8:]),
                ("decoder header not JSON", decoder[:8] + b"{" * (len(decoder) - 8)),
                ("decoder bytes flipped", decoder[:20] + b"\xff\xff" + decoder[22:]),
                ("decoder header NaN", decoder.replace(b'"F32"', b'"F64"', 1))]
    cases = _ids("ply-gaussians", [(w, {"point_cloud.ply": d}) for w, d in plys]
                 + [(w, {"point_cloud.decoder.safetensors": d}) for w, d in decoders])
    cases += _ids("camera", [(w, {"cam.json": d}) for w, d in _json_cases(random.Random(SEED + 3), camera,
                                                                            CASES["camera"])])
    failures = _fuzz_folder(capsys, pristine, tmp_path / "work", cases, args)
    assert not failures, "\n".join(failures)


def test_fuzz_colmap_binary(datasets, tmp_path, capsys):
    sparse = datasets["colmap-bin"] / "sparse" / "0"
    files = {p.name: p.read_bytes() for p in sparse.iterdir()}
    fields = _colmap_fields(files)
    rng = random.Random(SEED + 4)
    cases = _ids("colmap-bin", [_colmap_bin_case(rng, files, fields) for _ in range(CASES["colmap-bin"])])
    failures = _fuzz_folder(capsys, datasets["colmap-bin"], tmp_path / "ds", cases,
                            lambda root: ["data", "info", str(root)], rel=lambda name: f"sparse/0/{name}")
    assert not failures, "\n".join(failures)


def test_fuzz_colmap_text(datasets, tmp_path, capsys):
    sparse = datasets["colmap-txt"] / "sparse" / "0"
    files = {p.name: p.read_text() for p in sparse.iterdir()}
    rng = random.Random(SEED + 5)
    cases = _ids("colmap-txt", [_colmap_txt_case(rng, files) for _ in range(CASES["colmap-txt"])])
    failures = _fuzz_folder(capsys, datasets["colmap-txt"], tmp_path / "ds", cases,
                            lambda root: ["data", "info", str(root)], rel=lambda name: f"sparse/0/{name}")
    assert not failures, "\n".join(failures)


def test_fuzz_transforms_json(datasets, tmp_path, capsys):
    meta = json.loads((datasets["transforms"] / "transforms.json").read_text())
    rng = random.Random(SEED + 6)
    cases = _ids("transforms", _json_cases(rng, meta, CASES["transforms"]))
    failures = _fuzz_folder(capsys, datasets["transforms"], tmp_path / "ds",
                            [(i, {"transforms.json": data}) for i, data in cases],
                            lambda root: ["data", "info", str(root)])
    assert not failures, "\n".join(failures)


# -- HTTP ------------------------------------------------------------------------------------------

def _http(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)  # (a Host given replaces http.client's)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


def _raw(port: int, data: bytes) -> bytes:
    """The head of what the server answers to ``data`` sent as is on a new connection (the
    connection stays open for writing: a half-closed one is a client gone, whose answer is dropped)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # refused mid-body: read what was answered
            pass
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    return answer


def _http_cases(rng: random.Random, bodies: dict[str, list], n: int) -> list[tuple[str, tuple]]:
    """(id, (method, path, body bytes, headers)) cases: mutated bodies of every endpoint, hostile
    headers, methods and paths, bodies near the size cap."""
    json_type = {"Content-Type": "application/json"}
    out = []
    for _ in range(n):
        path = rng.choice(sorted(bodies))
        base = rng.choice(bodies[path])
        r = rng.random()
        if r < 0.55:
            what, text = _json_structure_mutation(rng, base)
            out.append((f"{path} {what}", ("POST", path, text.encode(), json_type)))
        elif r < 0.75:
            what, data = _text_mutation(rng, json.dumps(base))
            out.append((f"{path} {what}", ("POST", path, data, json_type)))
        elif r < 0.85:
            kind = rng.choice(["text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                               "application/json-patch+json", "APPLICATION/JSON", "application/json; charset=latin-1",
                               "application/json, text/plain", "application/\u00e9"])
            out.append((f"{path} Content-Type {kind!r}", ("POST", path, json.dumps(base).encode(),
                                                            {"Content-Type": kind})))
        elif r < 0.92:
            headers = dict(json_type)
            what = rng.choice(["Origin", "Host", "Host@", "Origin null"])
            if what == "Origin":
                headers["Origin"] = "http://evil.example"
            elif what == "Origin null":
                headers["Origin"] = "null"
            elif what == "Host":
                headers["Host"] = "evil.example"
            else:
                headers["Host"] = "127.0.0.1@evil.example"
            out.append((f"{path} foreign {what}", ("POST", path, json.dumps(base).encode(), headers)))
        else:
            method, where = rng.choice([("GET", path), ("PUT", path), ("DELETE", "/health"), ("BREW", path),
                                        ("POST", "/health"), ("GET", "/nowhere/../etc/passwd"), ("GET", "/" + "a" * 5000),
                                        ("POST", path + "?x=" + "%00" * 10), ("OPTIONS", path), ("GET", "/views?view=-1")])
            out.append((f"{method} {where[:40]}", (method, where, json.dumps(base).encode() if method == "POST" else None,
                                                     json_type if method == "POST" else {})))
    return out


def test_fuzz_http_bodies(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    field = FeatureField.load(run, device="cpu", max_render_pairs=field_module.MAX_RENDER_PAIRS)
    cam = field.camera(0)
    pinhole = {"width": cam.width, "height": cam.height, "K": cam.K.tolist(), "camtoworld": cam.camtoworld.tolist()}
    view = {"view": 0, "split": "test"}
    prompt = {"camera": view, "points": [[8.0, 8.0]], "point_labels": [1], "box": [0.0, 0.0, 16.0, 16.0],
              "affinity": 0.8}
    bodies = {
        "/query": [{"text": "table", "negatives": ["object"], "rule": "auto", "threshold": None, "clean": False,
                    "with_ids": True}],
        "/segment": [{"camera": view, "labels": ["floor", "table"]}, {"camera": {**pinhole, "frame": "dataset"}}],
        "/prompt": [prompt, {**prompt, "camera": pinhole, "with_ids": True}],
        "/edit": [{"selection": {"ids": [0, 1, 2]}, "op": "recolor", "rgb": [1.0, 0.0, 0.0]},
                  {"selection": {"text": "table", "clean": False}, "op": "translate", "offset": [0.1, 0.0, 0.0]},
                  {"selection": {"prompt": prompt}, "op": "delete"}],
        "/render": [{"camera": pinhole, "mode": "features"}, {"camera": view, "mode": "relevancy", "text": "table"},
                    {"camera": view, "mode": "selection", "text": "lamp", "negatives": []}],
    }
    rng = random.Random(SEED + 7)
    cases = _ids("http", _http_cases(rng, bodies, CASES["http"] - 14))
    json_type = {"Content-Type": "application/json"}
    huge = [  # bodies near the cap (8 MiB), and one past it
        ("/query text of 7 MB", ("POST", "/query", json.dumps({"text": "x" * 7_000_000}).encode(), json_type)),
        ("/edit 800k ids past the end", ("POST", "/edit", json.dumps(  # 7.2 MB
            {"selection": {"ids": list(range(10**6, 18 * 10**5))}, "op": "delete"}).encode(), json_type)),
        ("/edit 1.1 million ids", ("POST", "/edit", json.dumps(
            {"selection": {"ids": [0] * 1_100_000}, "op": "delete"}).encode(), json_type)),
        ("/segment 100k labels", ("POST", "/segment", json.dumps({"camera": view, "labels": ["x"] * 100_000}).encode(),
                                  json_type)),
        ("/query nested 3 MB", ("POST", "/query", b'{"text": ' + b"[" * 1_500_000 + b"]" * 1_500_000 + b"}", json_type)),
        ("/render 2049 px", ("POST", "/render", json.dumps({"camera": {**pinhole, "width": 2049}}).encode(), json_type)),
        ("/render 10**13 px", ("POST", "/render", json.dumps({"camera": {**pinhole, "height": 10**13}}).encode(),
                               json_type)),
        ("/render 1e400 px", ("POST", "/render", json.dumps({"camera": pinhole}).replace('"width": 16', '"width": 1e400')
                              .encode(), json_type)),
        ("/prompt 10**400 box", ("POST", "/prompt", json.dumps({**prompt, "box": [0, 0, 1, 1]}).replace(
            "[0, 0, 1, 1]", "[0, 0, 1, 1" + "0" * 400 + "]").encode(), json_type)),
        ("/query NaN threshold", ("POST", "/query", b'{"text": "table", "threshold": NaN}', json_type)),
        ("/query infinite threshold", ("POST", "/query", b'{"text": "table", "threshold": 1e400}', json_type)),
        ("/query huge threshold", ("POST", "/query", b'{"text": "table", "threshold": 1e308, "rule": "ratio"}',
                                   json_type)),
        ("/edit 10**20 id", ("POST", "/edit", b'{"selection": {"ids": [100000000000000000000]}, "op": "delete"}',
                             json_type)),
    ]
    cases += _ids("http-big", huge)
    post = b"POST /query HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    raw_cases = [  # what http.client would not send
        ("chunked body", post + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n"),
        ("Content-Length not a number", post + b"Content-Length: 1e3\r\n\r\n{}"),
        ("two Content-Lengths", post + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        ("Content-Length 10**20", post + b"Content-Length: 100000000000000000000\r\n\r\n{}"),
        ("no Content-Length", post + b"\r\n{}"),
        ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n"),
        ("HTTP/1.0 without Host", b"POST /query HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"),
        ("header without colon", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nbroken header\r\n\r\n"),
        ("non-ASCII header", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: \xff\xfe\r\n\r\n"),
        ("non-ASCII path", b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("body past the cap", post + b"Content-Length: %d\r\n\r\n" % (9 << 20) + b" " * (1 << 16)),
        ("body shorter than its Content-Length", post + b"Content-Length: 100\r\n\r\n{}"),
    ]
    before = {k: v for k, v in _tree(run).items() if not k.startswith("edits/")}
    failures, statuses = [], collections.Counter()
    with FieldServer(field, ("127.0.0.1", 0), quiet=True, request_timeout=2).start() as srv:
        port = srv.server_address[1]
        for case_id, (method, path, body, headers) in cases:
            try:
                status, payload, kind = _http(port, method, path, body, headers)
            except (OSError, http.client.HTTPException) as e:
                failures.append(f"{case_id}: no answer ({e.__class__.__name__}: {e})")
                continue
            statuses[status] += 1
            if not (200 <= status < 300 or 400 <= status < 500):
                failures.append(f"{case_id}: status {status}: {payload[:200]!r}")
            elif status >= 400 and kind.startswith("application/json"):
                error = json.loads(payload)
                if set(error) != {"error", "status"} or error["status"] != status or "\n" in error["error"]:
                    failures.append(f"{case_id}: error body {payload[:200]!r}")
            elif status >= 400:
                failures.append(f"{case_id}: status {status} answered as {kind!r}: {payload[:100]!r}")
        for i, (what, data) in enumerate(raw_cases):
            try:
                answer = _raw(port, data)
            except OSError as e:
                failures.append(f"http-raw-{i:03d}:{what}: {e.__class__.__name__}: {e}")
                continue
            # (a request h11 cannot parse gets uvicorn's own plain-text 400)
            if not answer.startswith((b"HTTP/1.1 2", b"HTTP/1.1 4")):
                failures.append(f"http-raw-{i:03d}:{what}: answered {answer[:120]!r}")
        status, payload, _ = _http(port, "GET", "/health", None, {})
        assert status == 200 and json.loads(payload)["status"] == "ok"
    assert {k: v for k, v in _tree(run).items() if not k.startswith("edits/")} == before
    assert not failures, "\n".join(failures)
    # the cases reach every layer: the guard (403, 415), validation (400), the field (200)
    assert {200, 400, 403, 415} <= set(statuses) and statuses[200] >= 10, statuses


def test_the_cases_are_the_same_on_every_run():
    first = _json_cases(random.Random(SEED), {"a": [1, 2.5, {"b": "c"}]}, 20)
    again = _json_cases(random.Random(SEED), {"a": [1, 2.5, {"b": "c"}]}, 20)
    assert first == again and len({data for _, data in first}) > 10
    ply = b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nend_header\n" + np.zeros(
        2, np.float32).tobytes()
    assert _ply_cases(random.Random(SEED), [ply], 30) == _ply_cases(random.Random(SEED), [ply], 30)
