"""PyTorch's zip checkpoint format (`torch.save` since 1.6), read and written without torch.

Layout: `<prefix>/data.pkl` (a pickle whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)` with storages as persistent ids `('storage', torch.FloatStorage, key, location, numel)`),
`<prefix>/data/<key>` (raw storage bytes) and `<prefix>/version`; newer torch adds `byteorder` and
`.data/serialization_id`. A tensor can be a view into a larger storage: offsets and strides are honoured.

The writer emits only `data.pkl`, `data/N` and `version` (little-endian, no `byteorder` record): that is the
set every AUTOMATIC1111 WebUI release accepts in its strict zip-entry check, and `torch.load` reads archives
without `byteorder` in native order, i.e. little-endian on every x86/ARM host.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from .safe_pickle import MAX_PICKLE_BYTES, restricted_loads
from .tensors import STORAGE_DTYPES, EmbeddingFormatError, RawTensor

MAX_ENTRIES = 4096
MAX_STORAGE_BYTES = 1 << 31  # a whole SDXL vocabulary (a .bin view into it) is ~250 MB
ZIP_MAGIC = b"PK\x03\x04"
_ALIGN = 64  # torch aligns storage data to 64 bytes so that mmap=True works

# torch storage class names <-> our dtype names
_STORAGE_NAMES = {
    "FloatStorage": "fp32",
    "HalfStorage": "fp16",
    "BFloat16Storage": "bf16",
    "DoubleStorage": "fp64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_INT_DTYPES = {
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
_TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32")  # may appear as plain values


class _StorageType(str):
    """What `torch.FloatStorage` & co. unpickle to: just the dtype name."""


class ParameterDictStandIn(dict):
    """Stands in for `torch.nn.ParameterDict` (old WebUI/rinongal files): keeps only its parameters."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        params = state.get("_parameters") if isinstance(state, dict) else None
        if isinstance(params, dict):
            self.update(params)


class _Storage:
    """A storage of an archive, read from `<prefix>/data/<key>` when a tensor first needs it."""

    def __init__(self, archive: zipfile.ZipFile, entry: str, dtype: str, numel: int, big_endian: bool):
        self._archive, self._entry, self.dtype, self.numel = archive, entry, dtype, numel
        base = {**STORAGE_DTYPES, **_INT_DTYPES}[dtype]
        self._np_dtype = base.newbyteorder(">") if big_endian and base.itemsize > 1 else base
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._array is None:
            nbytes = self.numel * self._np_dtype.itemsize
            raw = _read_entry(self._archive, self._entry, MAX_STORAGE_BYTES)
            if len(raw) < nbytes:
                raise EmbeddingFormatError(f"storage {self._entry} holds {len(raw)} bytes, expected {nbytes}")
            self._array = np.frombuffer(raw, dtype=self._np_dtype, count=self.numel)
        return self._array


def _as_int_tuple(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in values):
        raise EmbeddingFormatError(f"tensor {what} {values!r} is not a tuple of non-negative integers")
    return tuple(values)


def _view(storage: Any, offset: Any, size: Any, stride: Any) -> RawTensor:
    """The tensor `storage[offset:]` viewed with `size`/`stride` (in elements), copied out after bounds checks."""
    if not isinstance(storage, _Storage) or not isinstance(offset, int) or offset < 0:
        raise EmbeddingFormatError("malformed tensor: its storage or offset is not valid")
    size, stride = _as_int_tuple(size, "size"), _as_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise EmbeddingFormatError(f"tensor size {size} and stride {stride} differ in length")
    data = storage.array()
    if math.prod(size) == 0:
        return RawTensor(np.zeros(size, dtype=data.dtype), storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise EmbeddingFormatError(f"tensor view reaches element {last} of a storage of {data.size}")
    strides = tuple(s * data.itemsize for s in stride)
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=strides, writeable=False)
    return RawTensor(view.copy(), storage.dtype)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _view(storage, offset, size, stride)


def _rebuild_tensor(storage, offset, size, stride):
    return _view(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, RawTensor):
        raise EmbeddingFormatError("malformed parameter: its data is not a tensor")
    return data


TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.nn.modules.container", "ParameterDict"): ParameterDictStandIn,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_NAMES.items()},
    **{("torch", name): f"torch.{name}" for name in _TORCH_DTYPES},
}


def _read_entry(archive: zipfile.ZipFile, name: str, cap: int) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > cap:
        raise EmbeddingFormatError(f"zip entry {name} is {info.file_size} bytes, over the {cap}-byte cap")
    try:
        with archive.open(info) as fh:  # zipfile stops at the recorded size and checks the CRC
            return fh.read()
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error) as exc:
        raise EmbeddingFormatError(f"cannot read zip entry {name} ({exc})") from None


def _pickle_entry(names: list[str]) -> str:
    pickles = [n for n in names if PurePosixPath(n).name == "data.pkl" and n.count("/") == 1]
    if len(pickles) != 1:
        raise EmbeddingFormatError("a zip file but not a torch checkpoint (expected one <prefix>/data.pkl)")
    return pickles[0]


def storage_reference(pid: Any, prefix: str, names, where: str = "") -> tuple[str, str, int]:
    """(storage dtype name, archive entry, element count) of a pickle's persistent id, checked: a 5-tuple
    ("storage", a storage class of TORCH_GLOBALS, key, location, count >= 0) whose entry the archive holds."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise EmbeddingFormatError(f"unsupported persistent id {pid!r:.80}{where}")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
        raise EmbeddingFormatError(f"malformed storage reference {pid!r:.80}{where}")
    entry = f"{prefix}/data/{key}"
    if entry not in names:
        raise EmbeddingFormatError(f"the archive has no storage entry {entry}")
    return str(storage_type), entry, numel


def read_torch_zip(path: str) -> Any:
    """Unpickle a torch zip checkpoint with the restricted unpickler; tensors come back as `RawTensor`."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise EmbeddingFormatError(f"not a readable zip archive ({exc})") from None
    with archive:
        names = archive.namelist()
        if len(names) > MAX_ENTRIES:
            raise EmbeddingFormatError(f"zip archive has {len(names)} entries; a torch embedding has a few")
        pkl = _pickle_entry(names)
        prefix = pkl.rsplit("/", 1)[0]
        big_endian = f"{prefix}/byteorder" in names and _read_entry(archive, f"{prefix}/byteorder", 16) == b"big"

        def persistent_load(pid: Any) -> _Storage:
            storage_type, entry, numel = storage_reference(pid, prefix, names, f" in {pkl}")
            return _Storage(archive, entry, storage_type, numel, big_endian)

        data = _read_entry(archive, pkl, MAX_PICKLE_BYTES)
        return restricted_loads(data, TORCH_GLOBALS, persistent_load)


# ---- writing -----------------------------------------------------------------------------------------------

_WRITE_STORAGES = {"fp32": "FloatStorage", "fp16": "HalfStorage", "bf16": "BFloat16Storage"}


class _PickleEmitter:
    """Writes protocol-2 pickle opcodes for dict/str/int/bool/None/tuple/RawTensor, as torch.save would.

    Tensors become `_rebuild_tensor_v2(<storage pid>, 0, size, stride, False, OrderedDict())`, their bytes are
    collected in `storages` (key = index) for the `data/N` entries.
    """

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.storages: list[bytes] = []

    def emit(self, value: Any) -> None:
        if value is None:
            self.out += b"N"
        elif isinstance(value, bool):
            self.out += b"\x88" if value else b"\x89"
        elif isinstance(value, int):
            self._int(value)
        elif isinstance(value, str):
            encoded = value.encode("utf-8")
            self.out += b"X" + struct.pack("<I", len(encoded)) + encoded
        elif isinstance(value, tuple):
            self.out += b"("
            for item in value:
                self.emit(item)
            self.out += b"t"
        elif isinstance(value, dict):
            self._dict(value)
        elif isinstance(value, RawTensor):
            self._tensor(value)
        else:
            raise TypeError(f"cannot write {type(value).__name__} into a torch archive")

    def _int(self, value: int) -> None:
        if -(2**31) <= value < 2**31:
            self.out += b"J" + struct.pack("<i", value)
        else:
            encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(encoded)]) + encoded

    def _global(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode("ascii")

    def _dict(self, value: dict) -> None:
        self.out += b"}("
        for key, item in value.items():
            self.emit(key)
            self.emit(item)
        self.out += b"u"

    def _tensor(self, tensor: RawTensor) -> None:
        data = np.ascontiguousarray(tensor.data, dtype=STORAGE_DTYPES[tensor.dtype])
        key = str(len(self.storages))
        self.storages.append(data.tobytes())
        strides = tuple(s // data.itemsize for s in data.strides)
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # args tuple, then the persistent-id tuple
        self.emit("storage")
        self._global("torch", _WRITE_STORAGES[tensor.dtype])
        for item in (key, "cpu", int(data.size)):
            self.emit(item)
        self.out += b"tQ"  # close the pid tuple, BINPERSID
        for item in (0, tuple(data.shape), strides, False):
            self.emit(item)
        self._global("collections", "OrderedDict")
        self.out += b")RtR"  # OrderedDict(), close args, _rebuild_tensor_v2(*args)


def _aligned_entry(buffer: io.BytesIO, name: str) -> zipfile.ZipInfo:
    """A stored ZipInfo whose data starts on a 64-byte boundary (padding in an extra field, as torch does)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header_end = buffer.tell() + 30 + len(name.encode("utf-8")) + 4  # local header + name + extra-field header
    padding = -header_end % _ALIGN
    info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
    return info


def torch_zip_bytes(obj: Any, prefix: str = "archive") -> bytes:
    """Serialise `obj` (dicts of str/int/None/RawTensor) as a torch zip checkpoint."""
    emitter = _PickleEmitter()
    emitter.emit(obj)
    emitter.out += b"."
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        entries = [("data.pkl", bytes(emitter.out))]
        entries += [(f"data/{key}", data) for key, data in enumerate(emitter.storages)]
        entries += [("version", b"3\n")]
        for name, payload in entries:
            archive.writestr(_aligned_entry(buffer, f"{prefix}/{name}"), payload)
    return buffer.getvalue()
