"""Model weights: `.safetensors` files <-> `dict[str, np.ndarray]` checked against a `ModelSpec`.

Tensors use HuggingFace names (`ModelSpec.weight_shapes()`); values are returned as float32
whatever the stored dtype (F32, F16, BF16 or F64). numpy has no bfloat16, so BF16 tensors
are read from the file's header offsets as uint16 bit patterns and widened to float32 here.
Every problem (unreadable or corrupt file, missing tensor, unexpected tensor, wrong shape,
unsupported dtype) raises `ConfigError` naming the file and the tensor. Weights are never
pickled (DESIGN.md section 6).
"""

import json
import struct
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from compiler.numerics import canonical_dtype, float32_to_bf16_bits
from emulator.files import atomic_write_bytes
from emulator.hw.errors import ConfigError
from emulator.limits import check_memory

# safetensors dtype code -> (bytes per element, numpy dtype or None for BF16)
STORED_DTYPES = {"F64": (8, np.float64), "F32": (4, np.float32), "F16": (2, np.float16),
                 "BF16": (2, None), "U8": (1, np.uint8)}
# MXFP4 (OCP microscaling): 4-bit E2M1 codes, two per byte (low nibble first), one E8M0
# power-of-two scale (biased by 127) per block of 32 values; the values of the 16 codes:
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
MXFP4_BIAS = 127
# Buffers some checkpoints carry that are recomputed from the config, so ignored on load.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
INIT_STD = 0.02          # HF initializer_range: std of Linear / Embedding weights
NORM_PERTURBATION = 0.1  # std of the random offset added to RMSNorm weights of 1.0
DECISIVE_SUFFIXES = ("gate.weight", "router.weight", "router.bias", "self_attn.sinks")
HEADER_LIMIT = 100_000_000  # bytes; safetensors itself rejects larger headers
SINGLE_FILE = "model.safetensors"             # HuggingFace's name for one-file weights
INDEX_FILE = "model.safetensors.index.json"   # and for a sharded checkpoint's index
WORKING_COPIES = 2       # float32 arrays alive per tensor while weights are made or read


def check_weights_memory(spec, what: str) -> None:
    """ResourceError when the float32 weights of `spec` would not fit the memory limit."""
    count = spec.param_count()
    check_memory(WORKING_COPIES * 4 * count, f"{what} ({count:,} parameters as float32)")


def read_header(path) -> dict[str, dict]:
    """The tensor table of a safetensors file: name -> {dtype, shape, data_offsets}.

    Checks the 8-byte length prefix, the JSON header and that every tensor's byte range lies
    inside the file and matches its shape and dtype.
    """
    path = Path(path)
    raw, data_size = _read_raw_header(path)
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: corrupt safetensors header: {exc}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: corrupt safetensors header: not a JSON object")
    table.pop("__metadata__", None)
    for name, entry in table.items():
        _check_entry(path, name, entry, data_size)
    return table


def _read_raw_header(path: Path) -> tuple[bytes, int]:
    """(header JSON bytes, size of the data section in bytes) of a safetensors file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ConfigError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, HEADER_LIMIT):
                raise ConfigError(f"{path}: corrupt safetensors file (header length {length} "
                                  f"exceeds the file size {size})")
            return handle.read(length), size - 8 - length
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such weights file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a .safetensors file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read weights file: {exc}") from None


def _check_entry(path: Path, name: str, entry, data_size: int) -> None:
    """Validate one tensor entry of a safetensors header."""
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise ConfigError(f"{where}: corrupt header entry {json.dumps(entry)}")
    if entry["dtype"] not in STORED_DTYPES:
        raise ConfigError(f"{where}: unsupported dtype {entry['dtype']} "
                          f"(supported: {', '.join(STORED_DTYPES)})")
    shape, offsets = entry["shape"], entry["data_offsets"]
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
               for v in [*shape, *offsets]) if isinstance(shape, list) else False
    if not ints or not isinstance(offsets, list) or len(offsets) != 2:
        raise ConfigError(f"{where}: corrupt shape/offsets {json.dumps(entry)}")
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=np.int64)) * STORED_DTYPES[entry["dtype"]][0]
    if not (begin <= end <= data_size and end - begin == nbytes):
        raise ConfigError(f"{where}: corrupt data offsets {offsets} for shape {shape} "
                          f"{entry['dtype']} (data section is {data_size} bytes)")


def check_tensor_table(path, table: dict, spec) -> None:
    """Compare a file's tensor names and shapes with `spec.weight_shapes()`."""
    expected = spec.weight_shapes()
    for name, shape in expected.items():
        if name not in table:
            raise ConfigError(f"{path}: missing tensor '{name}' (expected shape {list(shape)})")
        got = tuple(table[name]["shape"])
        if got != shape:
            raise ConfigError(f"{path}: tensor '{name}' has shape {list(got)}, "
                              f"expected {list(shape)}")
    for name in table:
        if name not in expected and not name.endswith(IGNORED_SUFFIXES):
            why = (" (tie_word_embeddings is true)" if name == "lm_head.weight"
                   else f" (not a tensor of this {spec.architecture} config)")
            raise ConfigError(f"{path}: unexpected tensor '{name}'{why}")


def load_weights(path, spec) -> dict[str, np.ndarray]:
    """Load a checkpoint as float32 arrays, checked against `spec` (a ModelSpec): a
    `.safetensors` file, a sharded checkpoint's `model.safetensors.index.json`, or a
    HuggingFace-style folder holding either (`find_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        found = find_checkpoint(path)
        if found is None:
            raise ConfigError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE} in the folder")
        path = found
    if path.name.endswith(".index.json"):
        return _load_sharded(path, spec)
    table = mxfp4_entries(read_header(path), spec)
    check_tensor_table(path, table, spec)
    check_weights_memory(spec, f"{path}: loading the weights")
    names = list(spec.weight_shapes())
    weights = _read_tensors(path, table, names)
    return {name: weights[name] for name in names}


def mxfp4_entries(table: dict, spec) -> dict:
    """The tensor table with each expected tensor that a checkpoint stores MXFP4-packed
    (gpt-oss: `X_blocks` uint8 [E, rows, G, 16] and `X_scales` uint8 [E, rows, G] for
    `X` [E, G * 32, rows]) as one entry of dtype "MXFP4" holding both."""
    table = dict(table)
    for name in spec.weight_shapes():
        blocks, scales = table.get(name + "_blocks"), table.get(name + "_scales")
        if name in table or blocks is None or scales is None:
            continue
        experts, rows, groups, half = blocks["shape"]
        table[name] = {"dtype": "MXFP4", "shape": [experts, groups * 2 * half, rows],
                       "blocks": name + "_blocks", "scales": name + "_scales"}
        del table[name + "_blocks"], table[name + "_scales"]
    return table


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 [E, G * 32, rows] of MXFP4 `blocks` uint8 [E, rows, G, 16] and `scales`
    uint8 [E, rows, G]: each byte's low nibble then high nibble, times 2^(scale - 127),
    transposed to the [E, in, out] layout of the fused expert tensors (transformers'
    `convert_moe_packed_tensors`)."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], -1)
    values = np.ldexp(FP4_VALUES[codes], (scales.astype(np.int32) - MXFP4_BIAS)[..., None])
    values = values.reshape(*blocks.shape[:2], -1)
    return np.ascontiguousarray(values.transpose(0, 2, 1))


def find_checkpoint(folder) -> Path | None:
    """The weights of a HuggingFace-style model folder: its sharded index if present, else
    its single `model.safetensors`; None when it has neither."""
    folder = Path(folder)
    for name in (INDEX_FILE, SINGLE_FILE):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_sharded(index: Path, spec) -> dict[str, np.ndarray]:
    """Tensors of a sharded checkpoint: the index's `weight_map` (tensor -> shard file
    beside the index) read shard by shard, every tensor checked against its shard's header."""
    weight_map = _read_weight_map(index)
    shards = sorted(set(weight_map.values()))
    tables = {shard: read_header(index.parent / shard) for shard in shards}
    raw = {}
    for name, shard in weight_map.items():
        if name not in tables[shard]:
            raise ConfigError(f"{index}: tensor '{name}' is mapped to {shard}, which does "
                              f"not hold it")
        raw[name] = tables[shard][name]
    owner = {packed: weight_map[packed + "_blocks"] for packed in mxfp4_entries(raw, spec)
             if packed not in raw}
    owner |= weight_map
    tables = {shard: mxfp4_entries(table, spec) for shard, table in tables.items()}
    combined = {name: tables[shard][name] for name, shard in owner.items()
                if name in tables[shard]}
    check_tensor_table(index, combined, spec)
    weights = {}
    for shard, table in tables.items():
        names = [n for n in spec.weight_shapes() if owner.get(n) == shard]
        weights.update(_read_tensors(index.parent / shard, table, names))
    return {name: weights[name] for name in spec.weight_shapes()}


def _read_weight_map(index: Path) -> dict[str, str]:
    """The `weight_map` of a sharded checkpoint's index file (tensor -> shard file name)."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{index}: no such checkpoint index file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{index}: cannot read checkpoint index: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{index}: malformed JSON at line {exc.lineno} column {exc.colno}: "
                          f"{exc.msg}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ConfigError(f"{index}: field 'weight_map' must map tensor names to shard files")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard:
            raise ConfigError(f"{index}: shard '{shard}' must be a file beside the index")
    return weight_map


def _read_tensors(path: Path, table: dict, names: list[str]) -> dict[str, np.ndarray]:
    """float32 arrays of tensors `names` of one safetensors file with header `table`."""
    packed = [n for n in names if table[n]["dtype"] == "MXFP4"]
    if packed:
        raw = _read_raw(path, [table[n][part] for n in packed for part in ("blocks", "scales")])
        weights = {n: dequantize_mxfp4(raw[table[n]["blocks"]], raw[table[n]["scales"]])
                   for n in packed}
        return weights | _read_tensors(path, table, [n for n in names if n not in packed])
    weights = _read_plain(path, [n for n in names if table[n]["dtype"] != "BF16"])
    header_len = _header_length(path)
    for name in names:
        if table[name]["dtype"] == "BF16":
            weights[name] = _read_bf16(path, header_len, table[name])
    return weights


def _read_plain(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Read non-bf16 tensors through safetensors' numpy loader, as float32."""
    return {n: np.asarray(v, dtype=np.float32) for n, v in _read_raw(path, names).items()}


def _read_raw(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Tensors `names` (non-bf16) as stored, through safetensors' numpy loader."""
    if not names:
        return {}
    try:
        with safetensors.safe_open(str(path), framework="numpy") as handle:
            return {n: handle.get_tensor(n) for n in names}
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: corrupt safetensors file: {exc}") from None


def _header_length(path: Path) -> int:
    """Byte length of the JSON header (the data section starts 8 bytes later)."""
    with open(path, "rb") as handle:
        return struct.unpack("<Q", handle.read(8))[0]


def _read_bf16(path: Path, header_len: int, entry: dict) -> np.ndarray:
    """Read one BF16 tensor's bit patterns at its header offsets and widen to float32."""
    begin, end = entry["data_offsets"]
    count = (end - begin) // 2
    bits = np.fromfile(path, dtype="<u2", count=count, offset=8 + header_len + begin)
    wide = bits.astype(np.uint32) << np.uint32(16)
    return wide.view(np.float32).reshape(entry["shape"])


def random_weights(spec, seed: int) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for `spec`, scaled like HF initialisation.

    Linear, embedding and bias tensors ~ normal(0, 0.02); RMSNorm weights are 1 plus a
    normal(0, 0.1) perturbation so that a wrong norm weight changes the logits; MoE router
    weights and attention sinks ~ normal(0, 1), so that routing and sink mass are decisive
    (no near-ties between experts that rounding could flip). `seed` is a non-negative
    integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    check_weights_memory(spec, "random weights")
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in spec.weight_shapes().items():
        values = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("norm.weight"):
            weights[name] = (1.0 + NORM_PERTURBATION * values).astype(np.float32)
        elif name.endswith(DECISIVE_SUFFIXES):
            weights[name] = values
        else:
            weights[name] = (INIT_STD * values).astype(np.float32)
    return weights


def serialize_weights(weights: dict, dtype: str = "fp32") -> bytes:
    """safetensors bytes of a weights dict stored as fp32, fp16 or bf16."""
    kind = canonical_dtype(dtype)
    arrays = {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in weights.items()}
    metadata = {"format": "pt"}
    if kind == "fp32":
        return safetensors.numpy.save(arrays, metadata=metadata)
    if kind == "fp16":
        with np.errstate(over="ignore"):
            halves = {n: v.astype(np.float16) for n, v in arrays.items()}
        return safetensors.numpy.save(halves, metadata=metadata)
    return _serialize_bf16(arrays, metadata)


def _serialize_bf16(arrays: dict, metadata: dict) -> bytes:
    """safetensors bytes with every tensor stored as BF16 (round-to-nearest-even)."""
    table, chunks, offset = {"__metadata__": metadata}, [], 0
    for name, value in arrays.items():
        data = float32_to_bf16_bits(value).astype("<u2").tobytes()
        table[name] = {"dtype": "BF16", "shape": list(value.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header = json.dumps(table, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + b"".join(chunks)


def save_weights(path, weights: dict, dtype: str = "fp32") -> None:
    """Write a weights dict as a `.safetensors` file atomically (fp32, fp16 or bf16)."""
    atomic_write_bytes(path, serialize_weights(weights, dtype))
