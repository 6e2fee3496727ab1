"""Arrow arrays built from their buffers, not with pa.array().

pa.array(), pa.scalar() and pa.repeat() import pandas the first time they
run (pyarrow checks each input for pandas types): ~33 MB of a Parquet
export's peak RSS and ~0.2 s of its start, in a process that never builds a
DataFrame. The exports make their columns here instead; a test checks that a
Parquet export of every kind leaves pandas unloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

_TYPES = {np.dtype(np.int64): "int64", np.dtype(np.float64): "float64"}


def numbers(values: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    """int64 or float64 values as they are; null where `missing`."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    arrow_type = getattr(pa, _TYPES[values.dtype])()
    nulls = 0 if missing is None else int(np.count_nonzero(missing))
    valid = None if not nulls else _bits(~missing)  # type: ignore[operator]
    return pa.Array.from_buffers(
        arrow_type, len(values), [valid, pa.py_buffer(values)], null_count=nulls
    )


def booleans(values: np.ndarray) -> pa.Array:
    import pyarrow as pa

    return pa.Array.from_buffers(pa.bool_(), len(values), [None, _bits(values)], null_count=0)


def column(values: Sequence[object], arrow_type: pa.DataType) -> pa.Array:
    """Python values (None for null) as a column of `arrow_type`: int64,
    float64 (from numbers, or from decimal texts where "" is null), bool or
    string."""
    import pyarrow as pa

    if arrow_type == pa.string():
        return strings(values)  # type: ignore[arg-type]
    if arrow_type == pa.float64() and any(isinstance(v, str) for v in values):
        return strings(values, empty_is_null=True).cast(pa.float64())  # type: ignore[arg-type]
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    filled = [0 if v is None else v for v in values] if missing.any() else values
    if arrow_type == pa.bool_():
        return booleans(np.array(filled, dtype=bool))
    dtype = np.float64 if arrow_type == pa.float64() else np.int64
    if arrow_type not in (pa.float64(), pa.int64()):
        raise TypeError(f"no column of {arrow_type}")
    return numbers(np.array(filled, dtype=dtype), missing if missing.any() else None)


def strings(values: Sequence[str | None], empty_is_null: bool = False) -> pa.Array:
    """Texts, null where None (and where "" with `empty_is_null`)."""
    import pyarrow as pa

    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    if empty_is_null:
        missing = offsets[1:] == offsets[:-1]
    else:
        missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    nulls = int(np.count_nonzero(missing))
    valid = None if not nulls else _bits(~missing)
    buffers = [valid, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.large_string(), len(encoded), buffers, null_count=nulls).cast(
        pa.string()
    )


def constant(text: str, count: int) -> pa.Array:
    """`text`, `count` times."""
    return choose(np.ones(count, dtype=bool), text, text)


def choose(flags: np.ndarray, if_true: str, if_false: str) -> pa.Array:
    """`if_true` where `flags`, else `if_false`."""
    import pyarrow as pa

    true, false = if_true.encode(), if_false.encode()
    lengths = np.where(flags, len(true), len(false))
    offsets = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(true) == len(false):  # rows of one width: laid out in NumPy
        table = np.frombuffer(false + true, dtype=np.uint8).reshape(2, -1)
        data = table[flags.astype(np.int64)].tobytes()
    else:
        parts = np.array([false, true], dtype=object)[flags.astype(np.int64)]
        data = b"".join(parts.tolist())
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(pa.large_string(), len(flags), buffers, null_count=0).cast(
        pa.string()
    )


def validity(missing: np.ndarray) -> pa.Buffer:
    """Arrow's validity bitmap: set where a value is present."""
    return _bits(~missing)


def _bits(flags: np.ndarray) -> pa.Buffer:
    import pyarrow as pa

    return pa.py_buffer(np.packbits(flags, bitorder="little"))
