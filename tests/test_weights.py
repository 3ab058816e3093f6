"""compiler.weights and compiler.numerics: safetensors round trips (fp32/fp16/bf16), bf16 bits,
seeded random weights, and malformed weight files."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from compiler.frontend import load_config
from compiler.numerics import (
    bf16_bits_to_float32,
    canonical_dtype,
    dtype_bytes,
    float32_to_bf16_bits,
    round_to,
)
from compiler.weights import load_weights, random_weights, read_header, save_weights
from emulator.hw.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = load_config(ROOT / "emulator" / "models" / "tiny.json")
TIED = load_config(ROOT / "programs" / "models" / "tiny-llama.json")


def raw_safetensors(tensors: dict) -> bytes:
    """Hand-built safetensors bytes: name -> (dtype code, shape, raw data bytes)."""
    table, blobs, offset = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        table[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header = json.dumps(table).encode()
    return struct.pack("<Q", len(header)) + header + b"".join(blobs)


# --------------------------------------------------------------------------- numerics


def test_bf16_round_to_nearest_even_known_values():
    one_plus = [1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8)]
    expected = [1.0, 1 + 2**-6, 1 + 2**-7, -1.0]
    assert round_to(np.array(one_plus, np.float32), "bf16").tolist() == expected
    assert float32_to_bf16_bits(np.float32(1.0)) == 0x3F80
    assert float32_to_bf16_bits(np.float32(-2.0)) == 0xC000


def test_bf16_special_values():
    values = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3.4e38, 1e-45], np.float32)
    out = round_to(values, "bf16")
    assert out[0] == np.inf and out[1] == -np.inf and np.isnan(out[2])
    assert out[3] == 0 and np.signbit(out[4])
    assert out[5] == np.inf  # above the largest bf16 (about 3.39e38): rounds to infinity
    assert out[6] == 0.0


def test_bf16_bits_round_trip_is_exact():
    bits = np.arange(0, 2**16, dtype=np.uint32).astype(np.uint16)
    values = bf16_bits_to_float32(bits)
    finite = np.isfinite(values)
    assert np.array_equal(float32_to_bf16_bits(values)[finite], bits[finite])


def test_round_to_fp16_and_fp32():
    x = np.array([1 / 3, 70000.0, 1e-8], np.float32)
    assert np.array_equal(round_to(x, "fp32"), x)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(np.float32)
    assert np.array_equal(round_to(x, "float16"), expected)
    assert dtype_bytes("bf16") == 2 and dtype_bytes("float32") == 4
    assert canonical_dtype("bfloat16") == "bf16"
    with pytest.raises(ValueError, match="int8"):
        canonical_dtype("int8")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_save_load_round_trip(dtype, tmp_path):
    weights = random_weights(TINY, seed=0)
    path = tmp_path / "w.safetensors"
    save_weights(path, weights, dtype)
    loaded = load_weights(path, TINY)
    assert list(loaded) == list(TINY.weight_shapes())
    for name, value in weights.items():
        assert loaded[name].dtype == np.float32
        assert np.array_equal(loaded[name], round_to(value, dtype)), name
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_hand_built_bf16_file_is_decoded_from_its_bits(tmp_path):
    weights = random_weights(TINY, seed=1)
    tensors = {}
    for name, value in weights.items():
        bits = (value.view(np.uint32) >> 16).astype("<u2")  # truncation, then exact decode
        tensors[name] = ("BF16", list(value.shape), bits.tobytes())
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(raw_safetensors(tensors))
    loaded = load_weights(path, TINY)
    for name, value in weights.items():
        truncated = (value.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        assert np.array_equal(loaded[name], truncated)


def test_mixed_dtypes_in_one_file(tmp_path):
    weights = random_weights(TINY, seed=2)
    tensors = {}
    for i, (name, value) in enumerate(weights.items()):
        if i % 2:
            tensors[name] = ("BF16", list(value.shape),
                             float32_to_bf16_bits(value).astype("<u2").tobytes())
        else:
            tensors[name] = ("F16", list(value.shape), value.astype("<f2").tobytes())
    path = tmp_path / "mixed.safetensors"
    path.write_bytes(raw_safetensors(tensors))
    loaded = load_weights(path, TINY)
    for i, (name, value) in enumerate(weights.items()):
        assert np.array_equal(loaded[name], round_to(value, "bf16" if i % 2 else "fp16"))


def test_torch_written_bf16_file(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    weights = random_weights(TINY, seed=3)
    save_file({n: torch.from_numpy(v).to(torch.bfloat16) for n, v in weights.items()},
              str(tmp_path / "t.safetensors"))
    loaded = load_weights(tmp_path / "t.safetensors", TINY)
    for name, value in weights.items():
        assert np.array_equal(loaded[name], round_to(value, "bf16"))


def test_rotary_inv_freq_buffers_are_ignored(tmp_path):
    weights = random_weights(TINY, seed=0)
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    save_weights(tmp_path / "w.safetensors", weights)
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in load_weights(
        tmp_path / "w.safetensors", TINY)


# --------------------------------------------------------------------------- random weights


def test_random_weights_are_deterministic_and_scaled():
    a, b, c = (random_weights(TINY, seed) for seed in (7, 7, 8))
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert {n: v.shape for n, v in a.items()} == TINY.weight_shapes()
    assert all(v.dtype == np.float32 for v in a.values())
    assert np.std(a["model.embed_tokens.weight"]) == pytest.approx(0.02, rel=0.05)
    norm = a["model.layers.1.input_layernorm.weight"]
    assert abs(np.mean(norm) - 1) < 0.05 and 0.05 < np.std(norm) < 0.2


# --------------------------------------------------------------------------- malformed files


def _without(name):
    return lambda w: w.pop(name)


def _reshape(name, shape):
    def edit(w):
        w[name] = np.zeros(shape, np.float32)
    return edit


def _extra(name):
    def edit(w):
        w[name] = np.zeros(3, np.float32)
    return edit


BAD_WEIGHTS = {
    "missing q_proj": (TINY, _without("model.layers.1.self_attn.q_proj.weight"),
                       "missing tensor 'model.layers.1.self_attn.q_proj.weight' "
                       "(expected shape [64, 64])"),
    "missing lm_head": (TINY, _without("lm_head.weight"), "'lm_head.weight'"),
    "wrong shape": (TINY, _reshape("model.layers.0.mlp.up_proj.weight", (64, 128)),
                    "tensor 'model.layers.0.mlp.up_proj.weight' has shape [64, 128], "
                    "expected [128, 64]"),
    "transposed k_proj": (TINY, _reshape("model.layers.0.self_attn.k_proj.weight", (64, 32)),
                          "expected [32, 64]"),
    "wrong norm length": (TINY, _reshape("model.norm.weight", (63,)), "'model.norm.weight'"),
    "unknown tensor": (TINY, _extra("model.layers.9.mlp.up_proj.weight"),
                       "unexpected tensor 'model.layers.9.mlp.up_proj.weight'"),
    "bias not in config": (TINY, _extra("model.layers.0.self_attn.q_proj.bias"),
                           "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"),
    "lm_head while tied": (TIED, _extra("lm_head.weight"),
                           "unexpected tensor 'lm_head.weight' (tie_word_embeddings is true)"),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_wrong_tensors_name_file_and_tensor(case, tmp_path):
    spec, edit, expected = BAD_WEIGHTS[case]
    weights = random_weights(spec, seed=0)
    edit(weights)
    path = tmp_path / "bad.safetensors"
    save_weights(path, weights)
    with pytest.raises(ConfigError) as info:
        load_weights(path, spec)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def _good_bytes():
    """A valid one-tensor file (64 float32 zeros)."""
    return raw_safetensors({"model.norm.weight": ("F32", [64], b"\0" * 256)})


CORRUPT_FILES = {
    "empty": (b"", "shorter than 8 bytes"),
    "text": (b"hello, this is not a tensor file", "header length"),
    "header json": (struct.pack("<Q", 5) + b"{oops", "corrupt safetensors header"),
    "header list": (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    "truncated data": (_good_bytes()[:-10], "corrupt data offsets"),
    "bad entry": (raw_safetensors({"model.norm.weight": ("F32", "x", b"")}),
                  "tensor 'model.norm.weight': corrupt"),
    "int tensor": (raw_safetensors({"model.norm.weight": ("I32", [64], b"\0" * 256)}),
                   "tensor 'model.norm.weight': unsupported dtype I32"),
    "size mismatch": (raw_safetensors({"model.norm.weight": ("F32", [64], b"\0" * 128)}),
                      "tensor 'model.norm.weight': corrupt data offsets"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_FILES))
def test_corrupt_files_raise_config_error(case, tmp_path):
    data, expected = CORRUPT_FILES[case]
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_weights(path, TINY)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="no such weights file"):
        load_weights(tmp_path / "absent.safetensors", TINY)
    with pytest.raises(ConfigError, match="is a directory"):
        read_header(tmp_path)


def test_failed_save_leaves_no_file(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises((TypeError, ValueError)):
        save_weights(path, {"a": object()})
    assert list(tmp_path.iterdir()) == []
