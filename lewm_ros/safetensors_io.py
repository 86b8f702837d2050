"""Read and write the safetensors file format with torch alone (no ``safetensors`` package needed).

Format (https://github.com/huggingface/safetensors): 8 bytes little-endian unsigned header size
N, then N bytes of UTF-8 JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`` (padded with spaces), then the raw little-endian tensor bytes;
offsets are relative to the first byte after the header. Loading parses JSON and copies bytes,
so it never executes code from the file (unlike pickle).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    'F64': torch.float64,
    'F32': torch.float32,
    'F16': torch.float16,
    'BF16': torch.bfloat16,
    'I64': torch.int64,
    'I32': torch.int32,
    'I16': torch.int16,
    'I8': torch.int8,
    'U8': torch.uint8,
    'BOOL': torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit too


class SafetensorsError(ValueError):
    """The file is not a valid safetensors file; the message says what is wrong with it."""


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to('cpu').contiguous().reshape(-1)
    if flat.numel() == 0:
        return b''
    raw = flat.view(torch.uint8).numpy().tobytes()
    if sys.byteorder != 'little' and flat.element_size() > 1:
        raw = bytes(
            torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            .view(-1, flat.element_size())
            .flip(1)
            .reshape(-1)
            .numpy()
        )
    return raw


def save_file(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to ``path`` atomically (temp file + rename); ``metadata`` values must be str."""
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f'safetensors metadata keys and values must be str; offending keys: {bad}')
        header['__metadata__'] = dict(metadata)
    # largest alignment first, like the reference writer, so every tensor starts aligned
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    chunks, offset = [], 0
    for name in order:
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name!r} is a {type(t).__name__}, not a torch.Tensor')
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f'{name!r} has dtype {t.dtype}, which safetensors cannot store here')
        raw = _tensor_bytes(t)
        header[name] = {
            'dtype': DTYPE_NAMES[t.dtype],
            'shape': list(t.shape),
            'data_offsets': [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(',', ':')).encode('utf-8')
    blob += b' ' * (-len(blob) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(blob)))
        f.write(blob)
        for raw in chunks:
            f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_header(f, path: Path, file_size: int) -> tuple[dict, int]:
    head = f.read(8)
    if len(head) < 8:
        raise SafetensorsError(
            f'{path}: file is {file_size} bytes, too short to be a safetensors file (truncated?)'
        )
    (n,) = struct.unpack('<Q', head)
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise SafetensorsError(
            f'{path}: header claims {n} bytes but the file has {file_size} bytes; '
            'the file is truncated or not a safetensors file'
        )
    try:
        header = json.loads(f.read(n).decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f'{path}: header is not valid JSON ({err}); the file is corrupt') from err
    if not isinstance(header, dict):
        raise SafetensorsError(f'{path}: header is not a JSON object; the file is corrupt')
    return header, 8 + n


def _check_entry(
    path: Path, name: str, entry: object, data_size: float
) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(entry, dict) or not {'dtype', 'shape', 'data_offsets'} <= set(entry):
        raise SafetensorsError(f'{path}: header entry {name!r} lacks dtype/shape/data_offsets')
    if entry['dtype'] not in DTYPES:
        raise SafetensorsError(f'{path}: tensor {name!r} has unsupported dtype {entry["dtype"]!r}')
    dtype, shape, offsets = DTYPES[entry['dtype']], entry['shape'], entry['data_offsets']
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise SafetensorsError(f'{path}: tensor {name!r} has an invalid shape {shape!r}')
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise SafetensorsError(f'{path}: tensor {name!r} has invalid data_offsets {offsets!r}')
    begin, end = offsets
    numel = 1
    for s in shape:
        numel *= s
    expected = numel * torch.empty((), dtype=dtype).element_size()
    if not 0 <= begin <= end or end - begin != expected:
        raise SafetensorsError(
            f'{path}: tensor {name!r} {entry["dtype"]}{shape} needs {expected} bytes '
            f'but its offsets {offsets} '
            f'span {end - begin}; the file is corrupt'
        )
    if end > data_size:
        raise SafetensorsError(
            f'{path}: tensor {name!r} ends at byte {end} of the data but only {data_size} bytes are present; '
            'the file is truncated'
        )
    return dtype, shape, begin, end


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file (empty if none), without reading tensors."""
    path = Path(path)
    with open(path, 'rb') as f:
        header, _ = _read_header(f, path, path.stat().st_size)
    return dict(header.get('__metadata__') or {})


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (no tensor bytes read).

    Each entry's dtype, shape and offsets are checked against each other; whether the file holds
    all the bytes is left to :func:`load_file`.
    """
    path = Path(path)
    with open(path, 'rb') as f:
        header, _ = _read_header(f, path, path.stat().st_size)
    header.pop('__metadata__', None)
    return {name: tuple(_check_entry(path, name, entry, math.inf)[1]) for name, entry in header.items()}


def load_file(path: str | os.PathLike, device: str | torch.device = 'cpu') -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto ``device``; raises ``SafetensorsError`` if invalid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist')
    file_size = path.stat().st_size
    out: dict[str, torch.Tensor] = {}
    with open(path, 'rb') as f:
        header, start = _read_header(f, path, file_size)
        header.pop('__metadata__', None)
        entries = {name: _check_entry(path, name, entry, file_size - start) for name, entry in header.items()}
        for name, (dtype, shape, begin, end) in entries.items():
            out[name] = _read_tensor(f, start, dtype, shape, begin, end).to(device)
    return out


def _read_tensor(f, start: int, dtype: torch.dtype, shape: list[int], begin: int, end: int) -> torch.Tensor:
    """One tensor read from its own bytes, so memory stays at one copy of the weights."""
    if end == begin:
        return torch.empty(shape, dtype=dtype)
    # a private aligned buffer per tensor: offsets in foreign files need not be aligned
    f.seek(start + begin)
    t = torch.frombuffer(bytearray(f.read(end - begin)), dtype=dtype).reshape(shape)
    if sys.byteorder != 'little' and t.element_size() > 1:
        t = t.view(torch.uint8).view(-1, t.element_size()).flip(1).contiguous().view(dtype).reshape(shape)
    return t
