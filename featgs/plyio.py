"""Reading and writing the ``vertex`` element of PLY files.

Only the vertex element is returned: Gaussian splats and point clouds (``points3D.ply``) keep
everything there. Other elements are skipped (and never read when they follow the vertex
element). Binary data goes through numpy structured dtypes, copied between records and
columns in cache-sized blocks of rows, so millions of vertices never cost a Python loop per
vertex.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from featgs.atomic import atomic_open
from featgs.errors import FeatgsError

# PLY scalar type names (both the classic and the sized spellings) -> numpy kind + size.
PLY_TYPES: Dict[str, str] = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}  # fmt: skip
# numpy dtype -> the classic name written to headers (what every 3DGS viewer expects).
_WRITE_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
                "i4": "int", "u4": "uint", "f4": "float", "f8": "double"}  # fmt: skip
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
# A header is a few KB; this bound stops a garbage file that happens to start with "ply"
# from being read line by line to its end.
_MAX_HEADER_BYTES = 1 << 20
# Columns are copied to and from interleaved records one cache-sized block of rows at a
# time: a whole-array copy per column would stream the full buffer through memory once per
# property (5x slower for 3DGS files, which have 60+ properties).
_BLOCK_BYTES = 1 << 20


def row_blocks(n_rows: int, row_bytes: int) -> Iterator[slice]:
    """Slices covering ``range(n_rows)`` whose rows span about 1 MiB each."""
    step = max(1, _BLOCK_BYTES // max(1, row_bytes))
    return (slice(start, start + step) for start in range(0, n_rows, step))


@dataclass(frozen=True)
class _Property:
    name: str
    dtype: str  # numpy kind+size, e.g. "f4"
    count_dtype: Optional[str] = None  # set for list properties: the type of the length prefix


@dataclass(frozen=True)
class _Element:
    name: str
    count: int
    properties: Tuple[_Property, ...]


# -- reading --------------------------------------------------------------------------------


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
    try:
        with open(path, "rb") as f:
            fmt, elements = _read_header(f, path)
            vertex = _vertex_element(elements, path)
            before = elements[: elements.index(vertex)]
            if fmt == "ascii":
                return _read_ascii(f, before, vertex, path)
            return _read_binary(f, _FORMATS[fmt], before, vertex, path)
    except FileNotFoundError:
        raise FeatgsError(f"{path}: PLY file not found") from None
    except IsADirectoryError:
        raise FeatgsError(f"{path}: is a folder; expected a PLY file") from None
    except PermissionError:
        raise FeatgsError(f"{path}: permission denied reading the PLY file") from None


def _read_header(f: BinaryIO, path: Path) -> Tuple[str, List[_Element]]:
    magic = f.readline(8)
    if magic.rstrip(b"\r\n") != b"ply":
        raise FeatgsError(f"{path}: not a PLY file (expected the first line to be 'ply')")
    fmt: Optional[str] = None
    elements: List[Tuple[str, int, List[_Property]]] = []
    size = len(magic)
    while True:
        raw = f.readline(_MAX_HEADER_BYTES)
        size += len(raw)
        if not raw or size >= _MAX_HEADER_BYTES:
            raise FeatgsError(f"{path}: PLY header has no 'end_header' line")
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise FeatgsError(f"{path}: PLY header contains non-ASCII bytes") from None
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            break
        if key == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise FeatgsError(f"{path}: bad PLY format line {line!r}; expected 'format binary_little_endian|binary_big_endian|ascii 1.0'")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise FeatgsError(f"{path}: bad PLY element line {line!r}; expected 'element NAME COUNT'")
            elements.append((words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise FeatgsError(f"{path}: PLY property {line!r} appears before any element")
            elements[-1][2].append(_parse_property(words, line, path))
        else:
            raise FeatgsError(f"{path}: unexpected PLY header line {line!r}")
    if fmt is None:
        raise FeatgsError(f"{path}: PLY header has no 'format' line")
    out = []
    for name, count, props in elements:
        names = [p.name for p in props]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise FeatgsError(f"{path}: PLY element '{name}' declares property {dup[0]!r} more than once")
        out.append(_Element(name, count, tuple(props)))
    return fmt, out


def _parse_property(words: List[str], line: str, path: Path) -> _Property:
    if len(words) == 3:
        return _Property(words[2], _ply_type(words[1], path))
    if len(words) == 5 and words[1] == "list":
        count_dtype = _ply_type(words[2], path)
        if count_dtype[0] == "f":
            raise FeatgsError(f"{path}: PLY list property {words[4]!r} has a {words[2]} length; expected an integer type")
        return _Property(words[4], _ply_type(words[3], path), count_dtype)
    raise FeatgsError(f"{path}: bad PLY property line {line!r}; expected 'property TYPE NAME' or 'property list TYPE TYPE NAME'")


def _ply_type(name: str, path: Path) -> str:
    try:
        return PLY_TYPES[name]
    except KeyError:
        raise FeatgsError(f"{path}: unknown PLY type {name!r}; expected one of {', '.join(PLY_TYPES)}") from None


def _vertex_element(elements: List[_Element], path: Path) -> _Element:
    vertex = next((e for e in elements if e.name == "vertex"), None)
    if vertex is None:
        raise FeatgsError(f"{path}: PLY file has no 'vertex' element")
    for p in vertex.properties:
        if p.count_dtype is not None:
            raise FeatgsError(f"{path}: vertex property {p.name!r} is a list; expected scalar vertex properties only")
    return vertex


def _read_binary(f: BinaryIO, endian: str, before: List[_Element], vertex: _Element, path: Path) -> Dict[str, np.ndarray]:
    for element in before:
        _skip_binary_element(f, endian, element, path)
    dtype = np.dtype([(p.name, endian + p.dtype) for p in vertex.properties])
    nbytes = dtype.itemsize * vertex.count
    data = f.read(nbytes)
    if len(data) < nbytes:
        raise FeatgsError(f"{path}: PLY file is truncated: {vertex.count} vertices need {nbytes} bytes of data, found {len(data)}")
    records = np.frombuffer(data, dtype=dtype, count=vertex.count)
    columns = {p.name: np.empty(vertex.count, dtype=p.dtype) for p in vertex.properties}
    for rows in row_blocks(vertex.count, dtype.itemsize):
        block = records[rows]
        for name, column in columns.items():
            column[rows] = block[name]  # also swaps big-endian bytes to native order
    return columns


def _skip_binary_element(f: BinaryIO, endian: str, element: _Element, path: Path) -> None:
    if all(p.count_dtype is None for p in element.properties):
        f.seek(element.count * sum(np.dtype(p.dtype).itemsize for p in element.properties), os.SEEK_CUR)
        return
    # Rows with lists have varying sizes, so walking them is unavoidable; such elements
    # (faces) almost always follow the vertices and are then never reached.
    for _ in range(element.count):
        for p in element.properties:
            size = np.dtype(p.dtype).itemsize
            if p.count_dtype is None:
                f.seek(size, os.SEEK_CUR)
                continue
            prefix = np.dtype(endian + p.count_dtype)
            raw = f.read(prefix.itemsize)
            if len(raw) < prefix.itemsize:
                raise FeatgsError(f"{path}: PLY file is truncated inside element '{element.name}'")
            n = int(np.frombuffer(raw, prefix)[0])
            if n < 0:
                raise FeatgsError(f"{path}: PLY element '{element.name}' has a list of negative length {n}")
            f.seek(n * size, os.SEEK_CUR)


def _read_ascii(f: BinaryIO, before: List[_Element], vertex: _Element, path: Path) -> Dict[str, np.ndarray]:
    tokens = f.read().split()
    pos = 0
    for element in before:
        pos = _skip_ascii_element(tokens, pos, element, path)
    n_props = len(vertex.properties)
    end = pos + vertex.count * n_props
    if len(tokens) < end:
        raise FeatgsError(f"{path}: PLY file is truncated: {vertex.count} vertices of {n_props} values need {end - pos} numbers, found {len(tokens) - pos}")
    table = np.array(tokens[pos:end], dtype=bytes).reshape(vertex.count, n_props)
    return {p.name: _parse_ascii_column(table[:, i], p, path) for i, p in enumerate(vertex.properties)}


def _skip_ascii_element(tokens: List[bytes], pos: int, element: _Element, path: Path) -> int:
    if all(p.count_dtype is None for p in element.properties):
        return pos + element.count * len(element.properties)
    for _ in range(element.count):
        for p in element.properties:
            if p.count_dtype is None:
                pos += 1
                continue
            try:
                n = int(tokens[pos])
            except (IndexError, ValueError):
                n = -1
            if n < 0:
                raise FeatgsError(f"{path}: PLY file is truncated or malformed inside element '{element.name}'")
            pos += 1 + n
    return pos


def _parse_ascii_column(column: np.ndarray, prop: _Property, path: Path) -> np.ndarray:
    dtype = np.dtype(prop.dtype)
    try:
        if dtype.kind == "f":
            return column.astype(dtype)
        # Integers go through int64 so that an out-of-range value is caught, not wrapped.
        wide = column.astype(np.int64)
    except ValueError:
        raise FeatgsError(f"{path}: vertex property {prop.name!r} holds a value that is not a {dtype.name} number") from None
    info = np.iinfo(dtype)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise FeatgsError(f"{path}: vertex property {prop.name!r} holds a value outside the {dtype.name} range")
    return wide.astype(dtype)


# -- writing --------------------------------------------------------------------------------


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
    fields = []
    header = ["ply", "format binary_little_endian 1.0"]
    for text in comments:
        if "\n" in text or "\r" in text:
            raise ValueError(f"PLY comment must be a single line, got {text!r}")
        header.append(f"comment {text}".rstrip())
    header.append(f"element vertex {n}")
    for name, a in columns.items():
        code = f"{a.dtype.kind}{a.dtype.itemsize}"
        if code not in _WRITE_NAMES:
            raise ValueError(f"PLY property {name!r}: dtype {a.dtype} has no PLY type; cast to one of int8/16/32, uint8/16/32, float32/64")
        if not name or any(c.isspace() for c in name) or not name.isascii():
            raise ValueError(f"PLY property name must be non-empty ASCII without spaces, got {name!r}")
        fields.append((name, "<" + code))
        header.append(f"property {_WRITE_NAMES[code]} {name}")
    header.append("end_header")
    records = np.empty(n, dtype=np.dtype(fields))
    for rows in row_blocks(n, records.dtype.itemsize):
        block = records[rows]
        for name, a in columns.items():
            block[name] = a[rows]
    with atomic_open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(memoryview(records))  # no extra copy of a possibly large buffer
