"""The tile pass: chunkings cover every vector, tiles partition every matrix, row orders."""

import json

import numpy as np
import pytest

from compiler.frontend import parse_config
from compiler.tile import (
    chunk_bounds,
    dump_tiles,
    gu_row_order,
    qkv_row_order,
    rope_pair_order,
    tile,
    verify_tiles,
)


def spec_of(hidden=20, heads=6, kv_heads=3, head_dim=4, ffn=30, vocab=37):
    """A tiny ModelSpec."""
    return parse_config({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
                         "intermediate_size": ffn, "num_hidden_layers": 1,
                         "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                         "head_dim": head_dim, "vocab_size": vocab,
                         "max_position_embeddings": 64}, "test")


@pytest.mark.parametrize("total,parts", [(10, 3), (3, 5), (0, 2), (16, 4), (1, 1)])
def test_chunk_bounds_are_near_equal(total, parts):
    bounds = chunk_bounds(total, parts)
    sizes = np.diff(bounds)
    assert len(bounds) == parts + 1 and bounds[0] == 0 and bounds[-1] == total
    assert sizes.max() - sizes.min() <= 1 and (np.diff(sizes) <= 0).all()


@pytest.mark.parametrize("pw,ph", [(3, 2), (4, 4), (5, 3), (8, 4), (1, 1), (2, 7)])
@pytest.mark.parametrize("layout", ["groups", "even"])
def test_plans_verify(pw, ph, layout):
    plan = tile(spec_of(), pw, ph, layout)
    verify_tiles(plan)
    assert plan.vec("hidden").parts == pw and plan.vec("vocab").parts == ph


def test_groups_layout_chunks_whole_kv_groups():
    spec = spec_of(heads=6, kv_heads=3)
    plan = tile(spec, 4, 2, "groups")
    assert plan.vec("groups").bounds == (0, 2, 3)
    glen = (spec.group_size + 2) * spec.head_dim
    assert plan.vec("qkv").bounds == (0, 2 * glen, 3 * glen)
    # more rows than kv groups: the extra rows hold none
    plan = tile(spec, 4, 5, "groups")
    assert list(plan.vec("groups").sizes()) == [1, 1, 1, 0, 0]
    assert plan.heads_on_row(3) == 0 and plan.tile_shape("qkv", 0, 4) == (0, 5)


def test_even_layout_balances_qkv_rows():
    spec = spec_of(heads=6, kv_heads=3)
    plan = tile(spec, 4, 5, "even")
    sizes = plan.vec("qkv").sizes()
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == spec.q_dim + 2 * spec.kv_dim


def test_rope_pairs_become_adjacent():
    order = rope_pair_order(8)
    assert list(order) == [0, 4, 1, 5, 2, 6, 3, 7]


def test_qkv_row_order_groups_heads_with_their_kv_head():
    spec = spec_of(heads=4, kv_heads=2, head_dim=2, hidden=8)
    order = qkv_row_order(spec)
    # group 0: q heads 0, 1 (pairs (0,1) already adjacent for hd=2), k head 0, v head 0
    assert list(order[:8]) == [0, 1, 2, 3, 8, 9, 12, 13]
    assert sorted(order) == list(range(16))


def test_gu_rows_pair_gate_and_up_chunks():
    plan = tile(spec_of(ffn=5), 2, 2)
    assert list(gu_row_order(plan)) == [0, 1, 2, 5, 6, 7, 3, 4, 8, 9]


def test_tile_shapes_and_dump():
    plan = tile(spec_of(), 3, 2)
    assert plan.tile_shape("o", 2, 1) == (plan.vec("hidden").size(2), plan.vec("attn").size(1))
    data = json.loads(dump_tiles(plan))
    assert data["matrices"]["qkv"]["kind"] == "A" and data["vectors"]["hidden"]["axis"] == "R"


def test_unknown_layout_is_rejected():
    spec = spec_of()
    with pytest.raises(ValueError, match="layout"):
        tile(spec, 2, 2, "diagonal")
