"""The place pass: the shared SRAM map, FitError with the smallest square mesh, host writes."""

import json

import numpy as np
import pytest

from compiler.frontend import parse_config
from compiler.place import (
    ascii_map,
    default_max_context,
    dump_placement,
    pe_usage,
    place,
    read_c,
    read_r,
    required_words,
    smallest_square,
    verify_placement,
    write_c,
    write_matrix,
    write_r,
)
from compiler.tile import tile
from emulator.hw.errors import FitError
from emulator.hw.mesh import load_mesh

MESH = load_mesh("small")


def spec_of(hidden=32, layers=2, ffn=64, vocab=100, max_pos=512):
    """A small ModelSpec."""
    return parse_config({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
                         "intermediate_size": ffn, "num_hidden_layers": layers,
                         "num_attention_heads": 4, "num_key_value_heads": 2,
                         "head_dim": 8, "vocab_size": vocab,
                         "max_position_embeddings": max_pos}, "test")


@pytest.mark.parametrize("layout", ["groups", "even"])
def test_placement_verifies_and_has_every_buffer(layout):
    spec = spec_of()
    plan = tile(spec, 4, 4, layout)
    placement = place(plan, MESH.with_mesh(4, 4), "fp32", 32)
    verify_placement(placement, MESH.with_mesh(4, 4))
    assert placement.slots == 8
    assert placement.buffers["L1.k0"].words == spec.head_dim * 8
    assert ("G" in placement.buffers) == (layout == "even")
    assert placement.total_words == required_words(plan, 32)


def test_default_max_context():
    assert default_max_context(spec_of(max_pos=512)) == 256
    assert default_max_context(spec_of(max_pos=100)) == 100


def test_fp16_halves_the_bytes():
    plan = tile(spec_of(), 4, 4)
    a = place(plan, MESH, "fp32", 16)
    b = place(plan, MESH, "fp16", 16)
    assert a.total_words == b.total_words and a.total_bytes == 2 * b.total_bytes


def test_fit_error_names_bytes_and_smallest_square():
    spec = spec_of(hidden=256, layers=4, ffn=1024, vocab=4096)
    plan = tile(spec, 4, 4, "even")
    with pytest.raises(FitError) as err:
        place(plan, MESH.with_mesh(4, 4), "fp32", 64)
    side = smallest_square(spec, MESH, "fp32", 64, "even")
    message = str(err.value)
    assert f"a PE has {MESH.sram_bytes} bytes" in message
    assert f"smallest square mesh that fits: {side}x{side}" in message
    assert place(tile(spec, side, side, "even"), MESH, "fp32", 64).total_bytes <= MESH.sram_bytes
    assert required_words(tile(spec, side - 1, side - 1, "even"), 64) * 4 > MESH.sram_bytes


def test_writes_round_trip_through_the_layouts():
    spec = spec_of(hidden=10, ffn=7, vocab=9)
    plan = tile(spec, 3, 4, "even")
    sram = np.zeros((12, 200), np.float32)
    v = np.arange(10, dtype=np.float32)
    write_r(sram, plan, "hidden", v, 5)
    assert np.array_equal(read_r(sram, plan, "hidden", 5), v)
    c = np.arange(9, dtype=np.float32) + 1
    write_c(sram, plan, "vocab", c, 50)
    assert np.array_equal(read_c(sram, plan, "vocab", 50), c)


def test_write_matrix_stores_column_major_tiles():
    spec = spec_of(hidden=5, ffn=7, vocab=6)
    plan = tile(spec, 2, 3)
    weight = np.arange(30, dtype=np.float32).reshape(6, 5)     # lm_head [vocab, hidden]
    sram = np.zeros((6, 64), np.float32)
    write_matrix(sram, plan, "lm_head", weight, 0)
    mpad = plan.mpad("lm_head")
    # PE (1, 2): rows 4..5 of vocab, cols 3..4 of hidden; column c at c * mpad
    pe = 2 * 2 + 1
    assert sram[pe, 0] == weight[4, 3] and sram[pe, 1] == weight[5, 3]
    assert sram[pe, mpad] == weight[4, 4]


def test_ascii_map_and_dump():
    spec = spec_of()
    mesh = MESH.with_mesh(4, 8)
    placement = place(tile(spec, 4, 8, "groups"), mesh, "fp32", 32)
    text = ascii_map(placement, mesh)
    assert len(text.splitlines()) == 3 + 8
    used = pe_usage(placement)
    assert used.shape == (8, 4) and used[0, 0] >= used[7, 3]   # rows 2.. hold no kv groups
    data = json.loads(dump_placement(placement, mesh))
    assert data["buffers"]["H"]["kind"] == "scratch" and data["total_words"] > 0
