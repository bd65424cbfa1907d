"""Reading and writing the ``vertex`` element of PLY files, through ``plyfile``.

plyfile parses the header and the data (memory-mapping binary files); what featgs adds is
what a user's file needs checked before it becomes Gaussians or a point cloud: a vertex
element with scalar properties, counts the file can hold, and errors as one line naming the
file. Columns come back in native byte order, copied out of the interleaved records in
cache-sized blocks of rows, so millions of vertices never cost a Python loop per vertex.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, Iterator, Mapping

import numpy as np
from plyfile import PlyData, PlyElement, PlyListProperty, PlyParseError

from featgs.atomic import atomic_open
from featgs.errors import FeatgsError

# Columns are copied to and from interleaved records one cache-sized block of rows at a
# time: a whole-array copy per column would stream the full buffer through memory once per
# property (5x slower for 3DGS files, which have 60+ properties).
_BLOCK_BYTES = 1 << 20
# numpy kind+size -> the classic PLY type name written to headers (what every 3DGS viewer expects).
_WRITE_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
                "i4": "int", "u4": "uint", "f4": "float", "f8": "double"}  # fmt: skip


def row_blocks(n_rows: int, row_bytes: int) -> Iterator[slice]:
    """Slices covering ``range(n_rows)`` whose rows span about 1 MiB each."""
    step = max(1, _BLOCK_BYTES // max(1, row_bytes))
    return (slice(start, start + step) for start in range(0, n_rows, step))


def read_ply_vertices(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """The vertex element of a PLY file, property by property.

    Returns:
        property name -> [N] array in native byte order with the property's own dtype
        (uchar -> uint8, float -> float32, ...), in the order of the header.
    Raises:
        FeatgsError: not a PLY file, malformed header, no vertex element, a list-valued
            vertex property, or data shorter than the header promises.
    """
    path = Path(path)
    if path.is_dir():
        raise FeatgsError(f"{path}: is a folder; expected a PLY file")
    try:
        with open(path, "rb") as f:
            if f.read(4).rstrip(b"\r\n") != b"ply":
                raise FeatgsError(f"{path}: not a PLY file (expected the first line to be 'ply')")
            f.seek(0)
            # Copy-on-write mapping: binary data is paged in as the columns are copied out.
            # An ASCII value beyond its type's range becomes inf (callers refuse it), an empty
            # ASCII list is read as such (list properties are refused below): neither a warning.
            with np.errstate(over="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = PlyData.read(f, mmap="c")
    except FileNotFoundError:
        raise FeatgsError(f"{path}: PLY file not found") from None
    except PermissionError:
        raise FeatgsError(f"{path}: permission denied reading the PLY file") from None
    except PlyParseError as e:
        raise FeatgsError(f"{path}: malformed PLY file ({_one_line(e)})") from None
    except UnicodeDecodeError:  # (a ValueError: before the clause below)
        raise FeatgsError(f"{path}: PLY header or ASCII data contains non-ASCII bytes") from None
    except (MemoryError, OverflowError, ValueError) as e:
        # A count larger than anything the file could hold (plyfile allocates it up front), or
        # a header plyfile refuses (two properties of one name).
        raise FeatgsError(f"{path}: malformed PLY header, or one that declares more data than the file holds "
                          f"({_one_line(e)})") from None
    if "vertex" not in data:
        raise FeatgsError(f"{path}: PLY file has no 'vertex' element")
    vertex = data["vertex"]
    names = [p.name for p in vertex.properties]
    for p in vertex.properties:
        if isinstance(p, PlyListProperty):
            raise FeatgsError(f"{path}: vertex property {p.name!r} is a list; expected scalar vertex properties only")
        if names.count(p.name) > 1:
            raise FeatgsError(f"{path}: PLY element 'vertex' declares property {p.name!r} more than once")
    records = vertex.data
    columns = {name: np.empty(len(records), dtype=records.dtype[name].newbyteorder("=")) for name in names}
    for rows in row_blocks(len(records), records.dtype.itemsize):
        block = records[rows]
        for name, column in columns.items():
            column[rows] = block[name]  # also swaps big-endian bytes to native order
    return columns


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or error.__class__.__name__


def write_ply_vertices(
    path: str | os.PathLike,
    props: Mapping[str, np.ndarray],
    *,
    comments: Iterable[str] = (),
) -> None:
    """Write ``props`` (name -> [N] array) as the vertex element of a binary little-endian PLY.

    Each property's PLY type follows its numpy dtype (float32 -> float, float64 -> double,
    uint8 -> uchar, int32 -> int, ...). The file is written atomically.

    Raises:
        ValueError: arrays that are not 1-D of one length, a dtype PLY cannot store
            (e.g. int64, bool), or a name or comment that would break the header.
    """
    columns = {name: np.asarray(a) for name, a in props.items()}
    lengths = {a.shape for a in columns.values()}
    if any(a.ndim != 1 for a in columns.values()) or len(lengths) > 1:
        raise ValueError(f"PLY properties must be 1-D arrays of one length, got shapes {sorted(lengths)}")
    n = next(iter(lengths))[0] if lengths else 0
    comments = list(comments)
    for text in comments:
        if "\n" in text or "\r" in text:
            raise ValueError(f"PLY comment must be a single line, got {text!r}")
    fields, types = [], {}
    for name, a in columns.items():
        code = f"{a.dtype.kind}{a.dtype.itemsize}"
        if code not in _WRITE_NAMES:
            raise ValueError(f"PLY property {name!r}: dtype {a.dtype} has no PLY type; cast to one of int8/16/32, uint8/16/32, float32/64")
        if not name or any(c.isspace() for c in name) or not name.isascii():
            raise ValueError(f"PLY property name must be non-empty ASCII without spaces, got {name!r}")
        fields.append((name, "<" + code))
        types[name] = _WRITE_NAMES[code]
    records = np.empty(n, dtype=np.dtype(fields))
    for rows in row_blocks(n, records.dtype.itemsize):
        block = records[rows]
        for name, a in columns.items():
            block[name] = a[rows]
    element = PlyElement.describe(records, "vertex", val_types=types)
    with atomic_open(path, "wb") as f:
        PlyData([element], text=False, byte_order="<", comments=comments).write(f)
