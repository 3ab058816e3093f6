"""gpt-oss checkpoints as published: MXFP4-packed expert tensors (`_blocks` + `_scales`)
read into the fused float layout, checked against an independent encoder here and against
transformers' own dequantiser (skipped without torch)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from compiler import reference as ref
from compiler.frontend import parse_config
from compiler.weights import FP4_VALUES, dequantize_mxfp4, load_weights, random_weights
from tests.test_models_moe import CONFIGS


def encode_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blocks, scales, decoded float32) of fused weights w [E, in, out]: per 32 inputs of
    one output a power-of-two scale, each value the nearest FP4 code."""
    rows = np.ascontiguousarray(w.transpose(0, 2, 1))            # [E, out, in]
    experts, out, inp = rows.shape
    groups = rows.reshape(experts, out, inp // 32, 32)
    peak = np.abs(groups).max(axis=-1)
    exponent = np.where(peak > 0, np.ceil(np.log2(np.maximum(peak, 1e-30) / 6.0)), 0)
    exponent = exponent.astype(np.int32)
    scaled = groups / np.ldexp(1.0, exponent)[..., None]
    codes = np.abs(scaled[..., None] - FP4_VALUES).argmin(axis=-1).astype(np.uint8)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    scales = (exponent + 127).astype(np.uint8)
    decoded = np.ldexp(FP4_VALUES[codes], exponent[..., None]).reshape(experts, out, inp)
    return blocks, scales, decoded.transpose(0, 2, 1).astype(np.float32)


@settings(max_examples=20, deadline=None)
@given(experts=st.integers(1, 3), groups=st.integers(1, 3), out=st.integers(1, 5),
       seed=st.integers(0, 2**16), magnitude=st.sampled_from([1e-3, 1.0, 300.0]))
def test_dequantize_inverts_the_encoder(experts, groups, out, seed, magnitude):
    w = (np.random.default_rng(seed).standard_normal((experts, 32 * groups, out))
         * magnitude).astype(np.float32)
    blocks, scales, decoded = encode_mxfp4(w)
    np.testing.assert_array_equal(dequantize_mxfp4(blocks, scales), decoded)
    assert np.abs(decoded - w).max() <= 0.25 * np.abs(w).max() + 1e-30


def packed_checkpoint(tmp_path, spec, weights):
    """A gpt-oss checkpoint whose fused expert tensors are stored MXFP4-packed, and the
    weights it decodes to."""
    stored, decoded = {}, dict(weights)
    for layer in range(spec.num_layers):
        names = spec.expert_names(layer)
        for role in ("gate_up", "down"):
            name = names[role]
            blocks, scales, values = encode_mxfp4(weights[name])
            stored[name + "_blocks"], stored[name + "_scales"] = blocks, scales
            decoded[name] = values
    stored |= {n: v for n, v in weights.items() if n not in decoded or decoded[n] is v}
    path = tmp_path / "model.safetensors"
    save_file(stored, str(path))
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["gpt-oss"]))
    return path, decoded


def test_packed_gpt_oss_checkpoint_runs_as_its_decoded_floats(tmp_path):
    data = dict(CONFIGS["gpt-oss"], hidden_size=64, intermediate_size=32)
    spec = parse_config(data, "g")
    weights = random_weights(spec, 4)
    path, decoded = packed_checkpoint(tmp_path, spec, weights)
    loaded = load_weights(path, spec)
    for name, value in decoded.items():
        np.testing.assert_array_equal(loaded[name], value)
    tokens = [3, 1, 4, 1, 5]
    np.testing.assert_array_equal(ref.prefill(spec, loaded, tokens)[0],
                                  ref.prefill(spec, decoded, tokens)[0])


def test_dequantize_matches_transformers():
    torch = pytest.importorskip("torch")
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (2, 6, 3, 16), dtype=np.uint8)
    scales = rng.integers(120, 135, (2, 6, 3), dtype=np.uint8)
    theirs = mxfp4.convert_moe_packed_tensors(torch.from_numpy(blocks),
                                              torch.from_numpy(scales), dtype=torch.float32)
    np.testing.assert_array_equal(dequantize_mxfp4(blocks, scales), theirs.numpy())
