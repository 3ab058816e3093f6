"""emulator.inspect.graph: decode/prefill op graphs verify, count FLOPs and bytes
consistently, execute to the reference logits, dump/reload, and broken graphs are caught
(hypothesis over configs)."""

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import reference as ref
from compiler.frontend import (
    ARCHITECTURES,
    MOE_ARCHITECTURES,
    QK_NORM_ARCHITECTURES,
    load_config,
    parse_config,
)
from compiler.weights import random_weights
from emulator.hw.errors import ConfigError
from emulator.inspect.graph import (
    OP_KINDS,
    GraphError,
    build_decode_graph,
    build_prefill_graph,
    dump_graph,
    graph_totals,
    interpret_graph,
    load_graph,
    verify_graph,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "tiny": ROOT / "emulator" / "models" / "tiny.json",
    **{name: ROOT / "programs" / "models" / f"{name}.json"
       for name in ("tiny-llama", "tiny-qwen2", "tiny-gqa", "llama-3.1-8b")},
}


def spec_of(name):
    """A ModelSpec by short name."""
    return load_config(CONFIGS[name])


def ops_of(graph, kind):
    """Names of the nodes of one op kind."""
    return [n for n, a in graph.nodes(data=True) if a["op"] == kind]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_graphs_verify(name):
    spec = spec_of(name)
    verify_graph(build_decode_graph(spec, 0), spec)
    verify_graph(build_decode_graph(spec, 17, bytes_per_element=4), spec)
    verify_graph(build_prefill_graph(spec, 9), spec)
    verify_graph(build_prefill_graph(spec, 9, all_logits=True), spec)


def test_decode_graph_structure():
    spec = spec_of("tiny-qwen2")
    graph = build_decode_graph(spec, 4)
    assert set(a["op"] for _, a in graph.nodes(data=True)) == set(OP_KINDS) - {"take_last"}
    assert len(ops_of(graph, "rmsnorm")) == 2 * spec.num_layers + 1
    assert len(ops_of(graph, "bias_add")) == 3 * spec.num_layers  # q, k, v biases
    assert len(ops_of(graph, "kv_append")) == 2 * spec.num_layers
    node = graph.nodes["layers.1.attn_scores"]
    t = 5
    assert node["layer"] == 1 and node["weight"] is None and node["weight_bytes"] == 0
    assert node["shape_in"] == ((1, spec.num_heads, spec.head_dim),
                                (spec.num_kv_heads, t, spec.head_dim))
    assert node["shape_out"] == (spec.num_heads, 1, t)
    q = graph.nodes["layers.0.q_proj"]
    assert q["weight"] == "model.layers.0.self_attn.q_proj.weight"
    assert q["weight_bytes"] == spec.q_dim * spec.hidden_size * 2
    assert q["flops"] == 2 * spec.q_dim * spec.hidden_size
    edge = graph.edges["layers.0.q_proj", "layers.0.q_proj_bias"]
    assert edge == {"tensor": "layers.0.q_proj", "elements": spec.q_dim, "port": 0}
    assert graph.nodes["argmax"]["shape_out"] == (1,)


def test_tied_lm_head_reads_the_embedding():
    spec = spec_of("tiny-llama")
    graph = build_decode_graph(spec, 0)
    assert graph.nodes["lm_head"]["weight"] == "model.embed_tokens.weight"


@pytest.mark.parametrize("bpe", [2, 4])
def test_totals_match_the_spec(bpe):
    spec = spec_of("llama-3.1-8b")
    position = 99
    totals = graph_totals(build_decode_graph(spec, position, bytes_per_element=bpe))
    assert totals["weight_bytes"] == spec.param_count() * bpe
    assert totals["kv_state_bytes"] == spec.kv_bytes_per_token(bpe) * (position + 1)
    matmul_params = spec.param_count() - spec.vocab_size * spec.hidden_size - \
        (2 * spec.num_layers + 1) * spec.hidden_size
    graph = build_decode_graph(spec, position)
    assert sum(graph.nodes[n]["flops"] for n in ops_of(graph, "matmul")) == 2 * matmul_params


def test_attention_flops_grow_linearly_with_position():
    spec = spec_of("tiny-gqa")
    flops = [graph_totals(build_decode_graph(spec, p))["flops"] for p in (10, 11, 12)]
    per_key = spec.num_layers * spec.num_heads * ((2 * spec.head_dim + 1) + 5 + 2 * spec.head_dim)
    assert flops[1] - flops[0] == flops[2] - flops[1] == per_key


def test_prefill_attention_counts_causal_pairs():
    spec = spec_of("tiny")
    graph = build_prefill_graph(spec, 6)
    pairs = 6 * 7 // 2
    assert graph.nodes["layers.0.softmax"]["flops"] == 5 * spec.num_heads * pairs
    assert graph.nodes["take_last"]["shape_out"] == (1, spec.hidden_size)
    assert graph.nodes["lm_head"]["shape_out"] == (1, spec.vocab_size)


# --------------------------------------------------------------------------- execution


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "tiny-qwen2", "tiny-gqa"])
def test_interpreted_graphs_match_the_reference(name):
    spec = spec_of(name)
    weights = random_weights(spec, seed=11)
    prompt = [5, 17, 3, 99, 42]
    values, cache = interpret_graph(build_prefill_graph(spec, len(prompt), all_logits=True),
                                    spec, weights, prompt)
    logits, ref_cache = ref.prefill(spec, weights, prompt)
    np.testing.assert_allclose(values["lm_head"], logits, atol=1e-5)
    np.testing.assert_allclose(cache.k, ref_cache.k, atol=1e-5)
    values, cache = interpret_graph(build_decode_graph(spec, len(prompt)), spec, weights, [7],
                                    cache)
    step = ref.decode_step(spec, weights, 7, ref_cache)
    np.testing.assert_allclose(values["lm_head"][0], step, atol=1e-5)
    assert values["argmax"].tolist() == [int(np.argmax(step))]
    assert cache.length == ref_cache.length == len(prompt) + 1


def test_prefill_last_row_graph_gives_the_first_token():
    spec = spec_of("tiny")
    weights = random_weights(spec, seed=2)
    prompt = [1, 2, 3, 4]
    values, _ = interpret_graph(build_prefill_graph(spec, 4), spec, weights, prompt)
    tokens, _ = ref.generate(spec, weights, prompt, 1)
    assert values["argmax"].tolist() == tokens


def test_interpret_rejects_a_cache_of_the_wrong_length():
    spec = spec_of("tiny")
    with pytest.raises(ValueError, match="cache holds 0 tokens"):
        interpret_graph(build_decode_graph(spec, 3), spec, random_weights(spec, 0), [1])


# --------------------------------------------------------------------------- dumping


def test_dump_and_reload(tmp_path):
    spec = spec_of("tiny-gqa")
    graph = build_decode_graph(spec, 3)
    dump_graph(graph, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["graph.dot", "graph.json"]
    loaded = load_graph(tmp_path / "out" / "graph.json")
    verify_graph(loaded, spec)
    assert dict(loaded.nodes(data=True)) == dict(graph.nodes(data=True))
    assert loaded.graph["kind"] == "decode" and loaded.graph["past_tokens"] == 3
    dot = (tmp_path / "out" / "graph.dot").read_text()
    assert dot.startswith('digraph "decode" {')
    assert '"layers.2.attn_values" -> "layers.2.o_proj"' in dot


# --------------------------------------------------------------------------- broken graphs


def _shape_mismatch(g):
    g.nodes["layers.0.softmax"]["shape_in"] = ((9, 9, 9),)


def _cycle(g):
    g.remove_edge("embedding", "layers.0.attn_norm")
    g.add_edge("layers.1.mlp_residual", "layers.0.attn_norm", tensor="layers.1.mlp_residual",
               elements=64, port=0)


def _two_outputs(g):
    g.add_node("dangling", op="rmsnorm", layer=-1, shape_in=((1, 64),), shape_out=(1, 64),
               weight=None, flops=0, weight_bytes=0)
    g.add_edge("embedding", "dangling", tensor="embedding", elements=64, port=0)


def _unfed_port(g):
    g.remove_edge("layers.0.v_append", "layers.0.attn_values")


def _unknown_weight(g):
    g.nodes["layers.0.q_proj"]["weight"] = "model.layers.0.self_attn.qkv.weight"


def _unused_weight(g):
    g.nodes["final_norm"].update(weight=None, weight_bytes=0)


def _bad_weight_shape(g):
    g.nodes["layers.0.q_proj"]["weight"] = "model.layers.0.self_attn.k_proj.weight"
    g.nodes["layers.0.q_proj"]["weight_bytes"] = 32 * 64 * 2


def _bad_elements(g):
    g.edges["layers.0.softmax", "layers.0.attn_values"]["elements"] = 3


def _bad_op(g):
    g.nodes["layers.0.softmax"]["op"] = "gelu"


def _bad_layer(g):
    g.nodes["layers.0.softmax"]["layer"] = 7


def _missing_attr(g):
    del g.nodes["layers.1.silu_mul"]["flops"]


BROKEN = {
    "shape mismatch": (_shape_mismatch, "'layers.0.attn_scores' produces"),
    "cycle": (_cycle, "cycle"),
    "two outputs": (_two_outputs, "one output node"),
    "unfed port": (_unfed_port, "node 'layers.0.attn_values': input ports fed [0]"),
    "unknown weight": (_unknown_weight, "'model.layers.0.self_attn.qkv.weight' is not a tensor"),
    "unused weight": (_unused_weight, "'model.norm.weight' is not read"),
    "bad weight shape": (_bad_weight_shape, "node 'layers.0.q_proj': matmul"),
    "bad elements": (_bad_elements, "elements 3"),
    "bad op": (_bad_op, "unknown op 'gelu'"),
    "bad layer": (_bad_layer, "layer 7"),
    "missing attribute": (_missing_attr, "missing attribute(s) ['flops']"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_verify_catches_broken_graphs(case):
    spec = spec_of("tiny")
    graph = build_decode_graph(spec, 2)
    mutate, expected = BROKEN[case]
    mutate(graph)
    with pytest.raises(GraphError) as info:
        verify_graph(graph, spec)
    assert expected in str(info.value)


def test_positions_outside_the_model_are_rejected():
    spec = spec_of("tiny")
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        build_decode_graph(spec, spec.max_position_embeddings)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        build_prefill_graph(spec, 0)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        build_prefill_graph(spec, spec.max_position_embeddings + 1)


# --------------------------------------------------------------------------- hypothesis


@st.composite
def small_configs(draw):
    """Random small valid HF config dicts over the dense architectures the graph maps."""
    dense = set(ARCHITECTURES) - set(MOE_ARCHITECTURES) - set(QK_NORM_ARCHITECTURES)
    arch = draw(st.sampled_from(sorted(dense)))
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.integers(1, 3))
    head_dim = 2 * draw(st.integers(1, 6))
    hidden = draw(st.sampled_from([heads * head_dim, 8 * draw(st.integers(1, 6))]))
    data = {
        "architectures": [arch],
        "hidden_size": hidden,
        "intermediate_size": draw(st.integers(1, 48)),
        "num_hidden_layers": draw(st.integers(1, 3)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": draw(st.integers(2, 64)),
        "max_position_embeddings": 64,
        "tie_word_embeddings": draw(st.booleans()),
    }
    if arch == "LlamaForCausalLM":
        data["attention_bias"] = draw(st.booleans())
        data["mlp_bias"] = draw(st.booleans())
    return data


@settings(max_examples=60, deadline=None)
@given(data=small_configs(), position=st.integers(0, 63), prompt_len=st.integers(1, 64),
       bpe=st.sampled_from([1, 2, 4]), all_logits=st.booleans())
def test_random_configs_give_valid_graphs(data, position, prompt_len, bpe, all_logits):
    spec = parse_config(data, "hypothesis")
    decode = build_decode_graph(spec, position, bytes_per_element=bpe)
    prefill = build_prefill_graph(spec, prompt_len, bytes_per_element=bpe, all_logits=all_logits)
    for graph, tokens in ((decode, position + 1), (prefill, prompt_len)):
        verify_graph(graph, spec)
        totals = graph_totals(graph)
        assert totals["weight_bytes"] == spec.param_count() * bpe
        assert totals["kv_state_bytes"] == spec.kv_bytes_per_token(bpe) * tokens
        assert totals["ops"]["kv_append"] == 2 * spec.num_layers
    rows = prompt_len if all_logits else 1
    assert prefill.nodes["argmax"]["shape_out"] == (rows,)
    assert math.prod(decode.nodes["lm_head"]["shape_out"]) == spec.vocab_size
