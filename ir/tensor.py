"""Constant tensors whose data is decoded only when a pass asks for it.

A Tensor wraps the TensorProto it was loaded from (or a numpy array a pass made). Reading
``shape`` and ``dtype`` never touches the data; ``numpy()`` decodes once and caches. External
data is validated when the model is loaded and never read into memory unless a pass asks:
``numpy()`` maps it (read-only), ``digest()`` and ``same_contents()`` read it in chunks, and
saving copies an untouched tensor's byte range from file to file.
"""

from __future__ import annotations

import functools
import hashlib
import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from optgraph.ir.errors import InvalidModelError

_CHUNK = 16 << 20  # bytes: how much of a large tensor is hashed, compared or copied at a time


@dataclass(frozen=True)
class ExternalData:
    """Where a tensor's bytes live outside the model file (already checked to be safe)."""

    path: str  # absolute, resolved path inside the model's folder
    location: str  # the relative location as written in the model
    offset: int
    length: int


class Tensor:
    """An immutable constant: an initializer's or a Constant node's value."""

    __slots__ = ("_proto", "_array", "_external")

    def __init__(self, proto: onnx.TensorProto | None = None, *, array: np.ndarray | None = None,
                 external: ExternalData | None = None) -> None:
        if (proto is None) == (array is None):
            raise ValueError("Tensor needs exactly one of proto or array")
        self._proto = proto
        self._external = external
        if array is not None:
            array = np.asarray(array, order="C")  # not ascontiguousarray: it turns a scalar into shape (1,)
            array.flags.writeable = False
        self._array = array

    @classmethod
    def from_array(cls, array: np.ndarray | float | int) -> Tensor:
        return cls(array=np.asarray(array))

    @property
    def shape(self) -> tuple[int, ...]:
        if self._proto is not None:
            return tuple(self._proto.dims)
        assert self._array is not None
        return tuple(self._array.shape)

    @property
    def dtype(self) -> int:
        """The ONNX element type (onnx.TensorProto.FLOAT, ...)."""
        if self._proto is not None:
            return self._proto.data_type
        assert self._array is not None
        return int(onnx.helper.np_dtype_to_tensor_dtype(self._array.dtype))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self._array is not None:
            return int(self._array.nbytes)
        if self._external is not None:
            return self._external.length
        return self.size * (itemsize(self.dtype) or 0)

    @property
    def encoded_size(self) -> int:
        """About how many bytes the tensor takes inside a model file (what the 2 GB limit counts)."""
        if self._proto is not None and self._external is None:
            return self._proto.ByteSize()
        return self.nbytes

    @property
    def is_external(self) -> bool:
        return self._external is not None

    def numpy(self) -> np.ndarray:
        """The data as a read-only array, decoded (or mapped from external data) on first use."""
        if self._array is None:
            assert self._proto is not None
            proto = self._proto
            dtype = _RAW_DTYPES.get(proto.data_type)
            if self._external is not None and dtype is not None:
                self._array = map_external(self._external, dtype, tuple(proto.dims))
                return self._array
            if self._external is not None:
                proto = onnx.TensorProto()
                proto.CopyFrom(self._proto)
                del proto.external_data[:]
                proto.data_location = onnx.TensorProto.DEFAULT
                proto.raw_data = read_external(self._external)
            array = _from_raw(proto)
            if array is None:
                array = numpy_helper.to_array(proto)
                array.flags.writeable = False
            self._array = array
        return self._array

    def tobytes(self) -> bytes:
        """The data's bytes; a loaded tensor's raw_data as stored, without decoding it."""
        if self._proto is not None and self._external is None and self._proto.HasField("raw_data"):
            return self._proto.raw_data
        return self.numpy().tobytes()

    def _raw(self) -> bytes | memoryview:
        """The data as ONNX stores it in ``raw_data``, for a tensor held in memory (no copy when possible)."""
        if self._proto is not None and self._external is None and self._proto.HasField("raw_data"):
            return self._proto.raw_data
        array = self.numpy()
        if _RAW_DTYPES.get(self.dtype) == array.dtype:
            return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        return numpy_helper.from_array(array).raw_data  # packed and other special encodings

    def chunks(self, size: int | None = None) -> Iterator[bytes | memoryview]:
        """The data as ONNX stores it in ``raw_data``, in pieces of at most ``size`` bytes.

        External data is read from its file piece by piece and an array is sliced without a copy,
        so a large tensor is never held in memory twice (or at all, when it is external).
        """
        size = size or _CHUNK
        if self._external is not None:  # the file's bytes, whether or not they were mapped
            yield from _read_chunks(self._external, 0, self._external.length, size)
            return
        data = self._raw()
        for start in range(0, len(data), size):
            yield data[start:start + size]

    def digest(self) -> bytes:
        """A 16-byte hash of the data's bytes, computed in chunks (equal data, equal digest)."""
        h = hashlib.blake2b(digest_size=16)
        for c in self.chunks():
            h.update(c)
        return h.digest()

    def sampled_digest(self, blocks: int = 64, block: int = 4096) -> bytes:
        """A hash of ``blocks`` evenly spaced pieces of the data: equal data give equal sampled
        digests, and different weights almost always differ, at a tiny fraction of a full digest's
        reads (callers confirm a match with ``digest`` or ``same_contents``)."""
        n = self.nbytes
        if n <= blocks * block:
            return self.digest()
        h = hashlib.blake2b(digest_size=16)
        starts = [i * (n - block) // (blocks - 1) for i in range(blocks)]
        if self._external is not None:
            for start in starts:
                for piece in _read_chunks(self._external, start, block, block):
                    h.update(piece)
        else:
            data = self._raw()
            for start in starts:
                h.update(data[start:start + block])
        return h.digest()

    def same_contents(self, other: Tensor) -> bool:
        """Whether both hold the same dtype, shape and bytes (compared in chunks)."""
        if self.dtype != other.dtype or self.shape != other.shape or self.nbytes != other.nbytes:
            return False
        if self.nbytes <= _CHUNK and self._external is None and other._external is None:
            return self.tobytes() == other.tobytes()
        a, b = _rechunk(self.chunks()), _rechunk(other.chunks())
        return all(x == y for x, y in zip(a, b))

    def to_proto(self, name: str | None = None) -> onnx.TensorProto:
        """A TensorProto named ``name`` (default: as loaded); the loaded proto is reused when possible."""
        if name is None:
            name = self._proto.name if self._proto is not None else ""
        if self._proto is not None and self._external is None:
            if self._proto.name == name:
                return self._proto
            proto = onnx.TensorProto()
            proto.CopyFrom(self._proto)
            proto.name = name
            return proto
        array, raw = self.numpy(), _RAW_DTYPES.get(self.dtype)
        if raw is None:
            proto = numpy_helper.from_array(array, name)
        else:  # what from_array builds, without its per-call type dispatch (rewrites make many)
            proto = onnx.TensorProto(dims=array.shape, data_type=self.dtype,
                                     raw_data=array.astype(raw, copy=False).tobytes())
            if name:
                proto.name = name
        if self._proto is not None:
            proto.doc_string = self._proto.doc_string
            proto.metadata_props.extend(self._proto.metadata_props)
        return proto

    def __repr__(self) -> str:
        return f"Tensor({onnx.TensorProto.DataType.Name(self.dtype)}, {list(self.shape)})"


def _rechunk(pieces: Iterator[bytes | memoryview], size: int = _CHUNK) -> Iterator[bytes]:
    """The same bytes in pieces of exactly ``size`` (the last may be shorter), so two streams align."""
    buf = bytearray()
    for p in pieces:
        buf += p
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


_TP = onnx.TensorProto
# Element types whose raw_data numpy reads directly (ONNX stores raw_data little-endian).
_RAW_DTYPES = {
    _TP.FLOAT: np.dtype("<f4"), _TP.DOUBLE: np.dtype("<f8"), _TP.FLOAT16: np.dtype("<f2"),
    _TP.INT8: np.dtype("i1"), _TP.INT16: np.dtype("<i2"), _TP.INT32: np.dtype("<i4"), _TP.INT64: np.dtype("<i8"),
    _TP.UINT8: np.dtype("u1"), _TP.UINT16: np.dtype("<u2"), _TP.UINT32: np.dtype("<u4"),
    _TP.UINT64: np.dtype("<u8"), _TP.BOOL: np.dtype("?"), _TP.COMPLEX64: np.dtype("<c8"),
    _TP.COMPLEX128: np.dtype("<c16"),
}


def _from_raw(proto: onnx.TensorProto) -> np.ndarray | None:
    """The data of a plain-typed tensor stored as raw_data, read in place (read-only, no copy).

    numpy_helper.to_array's type dispatch costs more than the read itself, which counts when a
    pass reads tens of thousands of small weights; None sends every other case (typed fields,
    packed and float8 types, strings, a size mismatch) to it.
    """
    dtype = _RAW_DTYPES.get(proto.data_type)
    if dtype is None:
        return None
    raw = proto.raw_data  # b"" when absent: then only an empty tensor passes the size check
    shape = tuple(proto.dims)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        return None
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@functools.cache
def itemsize(dtype: int) -> int | None:
    """Bytes per element of an ONNX element type; None when unknown or not fixed (strings)."""
    try:
        np_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype))
    except (KeyError, TypeError, ValueError):
        return None
    return None if np_dtype.kind in "OUS" else np_dtype.itemsize


def check_external(proto: onnx.TensorProto, base_dir: str | None) -> ExternalData:
    """Validate an external-data reference: it must stay inside the model's folder.

    Refuses absolute locations, ``..``, symlinks, hard links and ranges past the file's end, so
    a crafted model cannot make optgraph read (and copy into its output) files it should not.
    """
    info = {e.key: e.value for e in proto.external_data}
    where = f"tensor '{proto.name}'"
    location = info.get("location", "")
    if base_dir is None:
        raise InvalidModelError(f"{where} uses external data but the model was not loaded from a file")
    if not location:
        raise InvalidModelError(f"{where} has external data without a location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise InvalidModelError(f"{where}: external data location '{location}' must be a relative path")
    if ".." in location.replace("\\", "/").split("/"):
        raise InvalidModelError(f"{where}: external data location '{location}' escapes the model's folder")
    base = os.path.realpath(base_dir)
    path = os.path.join(base, location)
    if os.path.islink(path):
        raise InvalidModelError(f"{where}: external data file '{location}' is a symbolic link")
    real = os.path.realpath(path)
    if os.path.commonpath([real, base]) != base:
        raise InvalidModelError(f"{where}: external data location '{location}' escapes the model's folder")
    try:
        st = os.stat(real, follow_symlinks=False)
    except FileNotFoundError:
        raise InvalidModelError(f"{where}: external data file '{location}' does not exist") from None
    if st.st_nlink > 1:
        raise InvalidModelError(f"{where}: external data file '{location}' is a hard link")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise InvalidModelError(f"{where}: external data offset/length is not an integer") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise InvalidModelError(
            f"{where}: external data range [{offset}, {offset + length}) runs past the end of "
            f"'{location}' ({st.st_size} bytes)")
    return ExternalData(real, location, offset, length)


def open_external(ext: ExternalData) -> int:
    """A read-only descriptor of the tensor's (already checked) data file; never follows a link."""
    return os.open(ext.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))


def _read_chunks(ext: ExternalData, start: int, length: int, size: int) -> Iterator[bytes]:
    """``length`` bytes from ``start`` of the tensor's range, read ``size`` bytes at a time."""
    fd = open_external(ext)
    try:
        done = 0
        while done < length:
            piece = os.pread(fd, min(size, length - done), ext.offset + start + done)
            if not piece:
                raise InvalidModelError(f"external data file '{ext.location}' is shorter than the model says")
            done += len(piece)
            yield piece
    finally:
        os.close(fd)


def map_external(ext: ExternalData, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor's bytes mapped read-only from its file: pages are read only when touched."""
    if ext.length != math.prod(shape) * dtype.itemsize:
        raise InvalidModelError(f"external data in '{ext.location}' holds {ext.length} bytes, "
                                f"not the {math.prod(shape) * dtype.itemsize} its shape needs")
    if ext.length == 0:
        return np.zeros(shape, dtype)
    fd = open_external(ext)
    try:
        if os.fstat(fd).st_size < ext.offset + ext.length:  # a mapped page past the end would crash
            raise InvalidModelError(f"external data file '{ext.location}' is shorter than the model says")
        start = ext.offset - ext.offset % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(fd, ext.offset + ext.length - start, offset=start, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    array = np.frombuffer(m, dtype=dtype, count=math.prod(shape), offset=ext.offset - start).reshape(shape)
    array.flags.writeable = False
    return array


def read_external(ext: ExternalData) -> bytes:
    fd = open_external(ext)
    with os.fdopen(fd, "rb") as f:
        f.seek(ext.offset)
        data = f.read(ext.length)
    if len(data) != ext.length:
        raise InvalidModelError(f"external data file '{ext.location}' is shorter than the model says")
    return data
