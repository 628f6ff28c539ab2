"""Reading a GGUF file (llama.cpp's format for released models): its metadata, and its tensors as
float32.

A GGUF file is four parts, one after the other (all numbers little-endian)::

    header      b"GGUF", version (uint32), number of tensors (uint64), number of metadata entries
    (uint64) metadata    key (string), value type (uint32), value: numbers, strings, arrays of
    either tensor table  per tensor: name, number of dims, dims (innermost first), type (uint32),
    offset (uint64) data        every tensor's bytes, each starting at a multiple of
    ``general.alignment`` (default 32)

A string is its length (uint64) and its UTF-8 bytes. Quantized tensors are stored in blocks of 32
weights that share a scale; ``dequantize`` turns the blocks of each supported type back into floats.

What it leaves out: writing files, and the k-quants (Q4_K, Q6_K, ...) and other types llama.cpp
has; the ``gguf`` package (ggml-org's own) reads and writes all of them. Its reader wraps each of a
vocabulary's 100,000 strings in a numpy view and takes about 4 s to open a file on a 2-core CPU,
where this one takes a fraction of a second; tests check the two agree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import SLMError

MAGIC = b"GGUF"

# Metadata value types: id -> struct format (numbers), or "str" / "array".
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}

# Tensor types this reader turns into floats: id -> (name, weights per block, bytes per block).
TENSOR_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2),
                8: ("Q8_0", 32, 34), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20)}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    kind: str  # "F32", "Q4_1", ... (or the type's number, for a type this reader cannot read)
    shape: tuple[int, ...]  # PyTorch's order: rows first (GGUF lists the innermost dimension first)
    offset: int  # where its bytes start in the file
    nbytes: int


def _type_name(type_id: int) -> str:
    if type_id in TENSOR_TYPES:
        return TENSOR_TYPES[type_id][0]
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(type_id).name
    except (ImportError, ValueError):
        return f"type {type_id}"


class GGUFFile:
    """The metadata and tensor table of a GGUF file; tensors are read from disk when asked for.

    >>> f = GGUFFile(path)
    >>> f.metadata["llama.block_count"], f.tensors["blk.0.attn_q.weight"].kind
    (30, 'Q4_1')
    >>> f.tensor("blk.0.attn_q.weight").shape        # float32, dequantized
    torch.Size([576, 576])
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SLMError(f"no GGUF file at {self.path}; pass the path of a .gguf file")
        with self.path.open("rb") as f:
            if f.read(4) != MAGIC:
                raise SLMError(f"{self.path} is not a GGUF file (it does not start with b'GGUF')")
        # Copy-on-write: torch can view the bytes without a copy, and nothing is ever written back.
        self._data = np.memmap(self.path, mode="c")
        self._buffer = memoryview(self._data)
        try:
            self._read_header()
        except (struct.error, ValueError, UnicodeDecodeError, IndexError):
            raise SLMError(f"{self.path} is truncated or damaged: its header cannot be read; "
                           "download or install it again") from None
        end = max((t.offset + t.nbytes for t in self.tensors.values()), default=self.data_offset)
        if end > len(self._data):
            raise SLMError(f"{self.path} is truncated: its tensors need {end:,} bytes and the file "
                           f"has {len(self._data):,}; download or install it again")

    # ----- the header, read front to back -----

    def _read(self, fmt: str):
        value = struct.unpack_from(fmt, self._buffer, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def _read_string(self) -> str:
        n = self._read("<Q")
        text = bytes(self._buffer[self._pos:self._pos + n]).decode("utf-8")
        if len(text.encode("utf-8")) != n:
            raise ValueError("string runs past the end of the file")
        self._pos += n
        return text

    def _read_value(self, value_type: int):
        if value_type in _SCALARS:
            return self._read(_SCALARS[value_type])
        if value_type == _STRING:
            return self._read_string()
        if value_type == _ARRAY:
            item_type, n = self._read("<I"), self._read("<Q")
            if item_type in _NUMPY:  # numbers: one numpy read for the whole array
                items = np.frombuffer(self._buffer, _NUMPY[item_type], n, self._pos)
                self._pos += items.nbytes
                return items.tolist()
            return [self._read_value(item_type) for _ in range(n)]
        raise ValueError(f"unknown metadata type {value_type}")

    def _read_header(self) -> None:
        self._pos = 4
        self.version = self._read("<I")
        if self.version not in (2, 3):
            raise SLMError(f"{self.path} is GGUF version {self.version}; this reader knows "
                           "versions 2 and 3")
        n_tensors, n_metadata = self._read("<Q"), self._read("<Q")
        self.metadata: dict[str, object] = {}
        for _ in range(n_metadata):
            key = self._read_string()
            self.metadata[key] = self._read_value(self._read("<I"))
        table = []
        for _ in range(n_tensors):
            name = self._read_string()
            dims = [self._read("<Q") for _ in range(self._read("<I"))]
            table.append((name, tuple(reversed(dims)), self._read("<I"), self._read("<Q")))
        alignment = self.metadata.get("general.alignment", 32)
        # the data starts at the next multiple
        self.data_offset = -(-self._pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, type_id, offset in table:
            _, block, block_bytes = TENSOR_TYPES.get(type_id, (None, 1, 0))
            nbytes = int(np.prod(shape)) // block * block_bytes
            self.tensors[name] = TensorInfo(name, _type_name(type_id), shape,
                                            self.data_offset + offset, nbytes)

    # ----- tensors -----

    def raw(self, name: str) -> torch.Tensor:
        """The stored bytes of tensor ``name``, as a uint8 tensor that views the file (no copy)."""
        info = self.tensors[name]
        return torch.from_numpy(self._data[info.offset:info.offset + info.nbytes])

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as float32, in PyTorch's shape (rows first)."""
        info = self.tensors[name]
        if info.kind not in {kind for kind, _, _ in TENSOR_TYPES.values()}:
            raise SLMError(f"tensor {name} is stored as {info.kind}, which this reader cannot read "
                           f"(it reads {', '.join(kind for kind, _, _ in TENSOR_TYPES.values())}); "
                           "convert the model to one of those, e.g. with llama.cpp's "
                           "llama-quantize")
        return dequantize(self.raw(name), info.kind).view(info.shape)


def dequantize(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """The float32 weights in ``raw`` (uint8, a tensor's bytes) stored as ``kind``, flattened.

    Q8_0 block (34 bytes): scale d (float16), 32 signed bytes q;            weight = d * q
    Q4_0 block (18 bytes): scale d (float16), 16 bytes of two 4-bit q each;  weight = d * (q - 8)
    Q4_1 block (20 bytes): scale d, minimum m (float16), 16 bytes of 4-bit q; weight = d * q + m
    In a 4-bit block, byte j holds weight j in its low half and weight j + 16 in its high half.
    """
    if kind in ("F32", "F16", "BF16"):
        return raw.view({"F32": torch.float32, "F16": torch.float16,
                         "BF16": torch.bfloat16}[kind]).float()
    blocks = raw.view(-1, {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[kind])  # (n_blocks, bytes per block)
    d = blocks[:, 0:2].contiguous().view(torch.float16).float()  # (n_blocks, 1)
    if kind == "Q8_0":
        return (d * blocks[:, 2:].view(torch.int8)).flatten()
    packed = blocks[:, -16:]  # (n_blocks, 16)
    q = torch.cat([packed & 0x0F, packed >> 4], dim=1).float()  # (n_blocks, 32)
    if kind == "Q4_0":
        return (d * (q - 8)).flatten()
    m = blocks[:, 2:4].contiguous().view(torch.float16).float()  # (n_blocks, 1)
    return (d * q + m).flatten()
