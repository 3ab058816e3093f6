"""Op graph IR: one decode step or one prefill of a `ModelSpec` as a networkx DiGraph.

Every node is one op; its attributes:
- `op`: kind, one of `OP_KINDS`; `layer`: decoder layer index or -1 outside the layers;
- `shape_in`: tuple of input shapes, one per input port; `shape_out`: the output shape;
- `weight`: the HF tensor the op reads (None if none); `weight_bytes`: that tensor's size at
  the graph's `bytes_per_element` (a tied embedding is read by two nodes and so appears twice);
- `flops`: floating-point operations (multiply and add counted separately), per the table below;
- `kv_append` nodes also carry `cache` ("k" or "v") and `state_bytes` (the cache they hold after
  the append); `rope` nodes carry `first_position`.
Every edge carries `tensor` (the producing node's name), `elements` (its element count) and
`port` (which input of the consumer it feeds). Nodes are inserted in execution order.

Shapes use n = new tokens (1 for decode, P for prefill), past = cached tokens, T = past + n,
H = hidden, F = intermediate, V = vocab, d = head_dim, h / g = query / kv heads. Attention
touches pairs = n*past + n(n+1)/2 (query, key) pairs under the causal mask.

FLOP model: matmul 2*n*K*N; bias_add and residual_add one per output element; rmsnorm 4 per
element (square, sum, scale, weight); rope 3 per element (two multiplies, one add);
attn_scores (2d+1)*h*pairs (dot products and the 1/sqrt(d) scale); softmax 5*h*pairs (max,
subtract, exp, sum, divide); attn_values 2d*h*pairs; silu_mul 5 per element (negate, exp, add,
divide, multiply); argmax one compare per logit; input, embedding, kv_append, take_last 0.

`interpret_graph` executes a graph with numpy, so the graph's semantics are executable and
checked against `compiler.reference` in tests.
"""

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np

from emulator.files import atomic_write_text
from emulator.hw.errors import ConfigError

OP_KINDS = ("input", "embedding", "rmsnorm", "matmul", "bias_add", "rope", "kv_append",
            "attn_scores", "softmax", "attn_values", "residual_add", "silu_mul", "take_last",
            "argmax")
NODE_ATTRS = ("op", "layer", "shape_in", "shape_out", "weight", "flops", "weight_bytes")


class GraphError(ValueError):
    """An op graph that violates an invariant checked by `verify_graph` (a compiler bug)."""


class _Builder:
    """Adds op nodes and their input edges to a DiGraph for n new tokens after `past`."""

    def __init__(self, spec, n: int, past: int, bytes_per_element: int, kind: str):
        self.spec, self.n, self.past, self.bpe = spec, n, past, bytes_per_element
        self.total = past + n
        self.pairs = n * past + n * (n + 1) // 2
        self.shapes = spec.weight_shapes()
        self.graph = nx.DiGraph(kind=kind, new_tokens=n, past_tokens=past,
                                bytes_per_element=bytes_per_element, model=spec.to_dict())

    def op(self, name, op, layer, inputs, shape_in, shape_out, flops=0, weight=None, **extra):
        """Add node `name` fed by `inputs` (node names, one per port); returns `name`."""
        weight_bytes = math.prod(self.shapes[weight]) * self.bpe if weight else 0
        self.graph.add_node(name, op=op, layer=layer, shape_in=tuple(map(tuple, shape_in)),
                            shape_out=tuple(shape_out), weight=weight, flops=int(flops),
                            weight_bytes=weight_bytes, **extra)
        for port, source in enumerate(inputs):
            shape = self.graph.nodes[source]["shape_out"]
            self.graph.add_edge(source, name, tensor=source, elements=math.prod(shape), port=port)
        return name

    def linear(self, name, layer, source, in_shape, out_shape, tensor):
        """A matmul by HF weight `tensor` (+ a bias_add node when the spec has that bias)."""
        k, m = math.prod(in_shape[1:]), math.prod(out_shape[1:])
        node = self.op(name, "matmul", layer, [source], [in_shape], out_shape,
                       2 * in_shape[0] * k * m, weight=f"{tensor}.weight")
        if f"{tensor}.bias" in self.shapes:
            node = self.op(f"{name}_bias", "bias_add", layer, [node], [out_shape], out_shape,
                           math.prod(out_shape), weight=f"{tensor}.bias")
        return node

    def rmsnorm(self, name, layer, source, rows, tensor):
        """RMSNorm of [rows, H] by weight `tensor`."""
        shape = (rows, self.spec.hidden_size)
        return self.op(name, "rmsnorm", layer, [source], [shape], shape, 4 * math.prod(shape),
                       weight=tensor)


def _attention(b: _Builder, layer: int, x: str) -> str:
    """Attention block of one layer on normed input node `x`; returns the o_proj output node."""
    s, n, p = b.spec, b.n, f"layers.{layer}."
    w = f"model.layers.{layer}.self_attn."
    hidden = (n, s.hidden_size)
    q_shape, kv_shape = (n, s.num_heads, s.head_dim), (n, s.num_kv_heads, s.head_dim)
    cache_shape = (s.num_kv_heads, b.total, s.head_dim)
    q = b.linear(p + "q_proj", layer, x, hidden, q_shape, w + "q_proj")
    k = b.linear(p + "k_proj", layer, x, hidden, kv_shape, w + "k_proj")
    v = b.linear(p + "v_proj", layer, x, hidden, kv_shape, w + "v_proj")
    q = b.op(p + "q_rope", "rope", layer, [q], [q_shape], q_shape, 3 * math.prod(q_shape),
             first_position=b.past)
    k = b.op(p + "k_rope", "rope", layer, [k], [kv_shape], kv_shape, 3 * math.prod(kv_shape),
             first_position=b.past)
    state = math.prod(cache_shape) * b.bpe
    k = b.op(p + "k_append", "kv_append", layer, [k], [kv_shape], cache_shape, cache="k",
             state_bytes=state)
    v = b.op(p + "v_append", "kv_append", layer, [v], [kv_shape], cache_shape, cache="v",
             state_bytes=state)
    scores_shape = (s.num_heads, n, b.total)
    per_pair = s.num_heads * b.pairs
    scores = b.op(p + "attn_scores", "attn_scores", layer, [q, k], [q_shape, cache_shape],
                  scores_shape, (2 * s.head_dim + 1) * per_pair)
    probs = b.op(p + "softmax", "softmax", layer, [scores], [scores_shape], scores_shape,
                 5 * per_pair)
    out = b.op(p + "attn_values", "attn_values", layer, [probs, v], [scores_shape, cache_shape],
               q_shape, 2 * s.head_dim * per_pair)
    return b.linear(p + "o_proj", layer, out, q_shape, hidden, w + "o_proj")


def _mlp(b: _Builder, layer: int, x: str) -> str:
    """SwiGLU MLP of one layer on normed input node `x`; returns the down_proj output node."""
    s, n, p = b.spec, b.n, f"layers.{layer}."
    w = f"model.layers.{layer}.mlp."
    hidden, inter = (n, s.hidden_size), (n, s.intermediate_size)
    gate = b.linear(p + "gate_proj", layer, x, hidden, inter, w + "gate_proj")
    up = b.linear(p + "up_proj", layer, x, hidden, inter, w + "up_proj")
    act = b.op(p + "silu_mul", "silu_mul", layer, [gate, up], [inter, inter], inter,
               5 * math.prod(inter))
    return b.linear(p + "down_proj", layer, act, inter, hidden, w + "down_proj")


def _decoder_layer(b: _Builder, layer: int, h: str) -> str:
    """One pre-norm decoder layer on residual-stream node `h`; returns the new stream node."""
    p, hidden = f"layers.{layer}.", (b.n, b.spec.hidden_size)
    normed = b.rmsnorm(p + "attn_norm", layer, h, b.n,
                       f"model.layers.{layer}.input_layernorm.weight")
    attn = _attention(b, layer, normed)
    h = b.op(p + "attn_residual", "residual_add", layer, [attn, h], [hidden, hidden], hidden,
             math.prod(hidden))
    normed = b.rmsnorm(p + "mlp_norm", layer, h, b.n,
                       f"model.layers.{layer}.post_attention_layernorm.weight")
    mlp = _mlp(b, layer, normed)
    return b.op(p + "mlp_residual", "residual_add", layer, [mlp, h], [hidden, hidden], hidden,
                math.prod(hidden))


def _head(b: _Builder, h: str, all_logits: bool) -> None:
    """Final norm, (last-row selection,) LM head and argmax after residual-stream node `h`."""
    s, rows = b.spec, b.n
    h = b.rmsnorm("final_norm", -1, h, rows, "model.norm.weight")
    if not all_logits and rows > 1:
        h = b.op("take_last", "take_last", -1, [h], [(rows, s.hidden_size)], (1, s.hidden_size))
        rows = 1
    weight = "model.embed_tokens" if s.tie_word_embeddings else "lm_head"
    logits = b.linear("lm_head", -1, h, (rows, s.hidden_size), (rows, s.vocab_size), weight)
    b.op("argmax", "argmax", -1, [logits], [(rows, s.vocab_size)], (rows,),
         rows * s.vocab_size)


def _build(spec, n: int, past: int, bytes_per_element: int, kind: str, all_logits: bool):
    """The op graph of n new tokens after `past` cached ones."""
    spec.require_mapped("the op graph")
    b = _Builder(spec, n, past, bytes_per_element, kind)
    x = b.op("input", "input", -1, [], [], (n,))
    h = b.op("embedding", "embedding", -1, [x], [(n,)], (n, spec.hidden_size),
             weight="model.embed_tokens.weight")
    for layer in range(spec.num_layers):
        h = _decoder_layer(b, layer, h)
    _head(b, h, all_logits)
    return b.graph


def build_decode_graph(spec, position: int, bytes_per_element: int = 2) -> nx.DiGraph:
    """One decode step: the token at `position` (0-based) attends to position + 1 keys."""
    if not 0 <= position < spec.max_position_embeddings:
        raise ConfigError(f"decode position {position} is outside the model's positions "
                          f"[0, {spec.max_position_embeddings}) (max_position_embeddings)")
    return _build(spec, 1, position, bytes_per_element, "decode", all_logits=True)


def build_prefill_graph(spec, prompt_len: int, bytes_per_element: int = 2,
                        all_logits: bool = False) -> nx.DiGraph:
    """Prefill of `prompt_len` tokens; the LM head runs on the last row unless `all_logits`."""
    if not 1 <= prompt_len <= spec.max_position_embeddings:
        raise ConfigError(f"prompt length {prompt_len} must be between 1 and the model's "
                          f"max_position_embeddings ({spec.max_position_embeddings})")
    return _build(spec, prompt_len, 0, bytes_per_element, "prefill", all_logits)


# --------------------------------------------------------------------------- verification


def _fail(node, problem: str) -> GraphError:
    """A GraphError naming the node."""
    return GraphError(f"node '{node}': {problem}")


def _check_node_attrs(graph, spec) -> None:
    """Every node has the documented attributes with sane values."""
    for node, attrs in graph.nodes(data=True):
        missing = [a for a in NODE_ATTRS if a not in attrs]
        if missing:
            raise _fail(node, f"missing attribute(s) {missing}")
        if attrs["op"] not in OP_KINDS:
            raise _fail(node, f"unknown op {attrs['op']!r}")
        if not -1 <= attrs["layer"] < spec.num_layers:
            raise _fail(node, f"layer {attrs['layer']} outside [-1, {spec.num_layers})")
        if attrs["flops"] < 0 or attrs["weight_bytes"] < 0:
            raise _fail(node, "negative flops or weight_bytes")


def _check_edges(graph) -> None:
    """Each input port is fed by exactly one edge whose tensor shape matches the port."""
    for node, attrs in graph.nodes(data=True):
        ports = sorted(d["port"] for _, _, d in graph.in_edges(node, data=True))
        if ports != list(range(len(attrs["shape_in"]))):
            raise _fail(node, f"input ports fed {ports}, expected 0..{len(attrs['shape_in']) - 1}")
    for src, dst, data in graph.edges(data=True):
        produced = tuple(graph.nodes[src]["shape_out"])
        expected = tuple(graph.nodes[dst]["shape_in"][data["port"]])
        if produced != expected:
            raise GraphError(f"edge '{src}' -> '{dst}' (port {data['port']}): '{src}' produces "
                             f"{list(produced)} but '{dst}' expects {list(expected)}")
        if data["elements"] != math.prod(produced):
            raise GraphError(f"edge '{src}' -> '{dst}': elements {data['elements']} != "
                             f"{math.prod(produced)}")


def _check_endpoints(graph) -> None:
    """Acyclic, with exactly one input node and one output node."""
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise GraphError(f"graph has a cycle through '{cycle[0][0]}'")
    sources = [v for v in graph if graph.in_degree(v) == 0]
    sinks = [v for v in graph if graph.out_degree(v) == 0]
    if len(sources) != 1 or graph.nodes[sources[0]]["op"] != "input":
        raise GraphError(f"expected one input node, found sources {sources}")
    if len(sinks) != 1:
        raise GraphError(f"expected one output node, found sinks {sinks}")


def _check_weights(graph, spec) -> None:
    """Weights exist in the spec, match the op's shapes and sizes, and all are used."""
    shapes, bpe = spec.weight_shapes(), graph.graph.get("bytes_per_element", 2)
    used = set()
    for node, attrs in graph.nodes(data=True):
        name = attrs["weight"]
        if name is None:
            continue
        if name not in shapes:
            raise _fail(node, f"weight '{name}' is not a tensor of this model")
        used.add(name)
        if attrs["weight_bytes"] != math.prod(shapes[name]) * bpe:
            raise _fail(node, f"weight_bytes {attrs['weight_bytes']} != size of '{name}'")
        _check_weight_shape(node, attrs, shapes[name])
    unused = [n for n in shapes if n not in used]
    if unused:
        raise GraphError(f"weight '{unused[0]}' is not read by any op")


def _check_weight_shape(node, attrs, wshape) -> None:
    """A matmul weight is [out, in]; norm and bias weights match the feature width."""
    op, shape_in, shape_out = attrs["op"], attrs["shape_in"], attrs["shape_out"]
    if op == "matmul":
        ok = (tuple(wshape) == (math.prod(shape_out[1:]), math.prod(shape_in[0][1:]))
              and shape_in[0][0] == shape_out[0])
    elif op in ("rmsnorm", "embedding"):
        ok = wshape[-1] == shape_out[-1]
    elif op == "bias_add":
        ok = tuple(wshape) == (math.prod(shape_out[1:]),)
    else:
        ok = False
    if not ok:
        raise _fail(node, f"{op} with shapes {shape_in} -> {shape_out} cannot use a weight of "
                          f"shape {list(wshape)}")


def verify_graph(graph: nx.DiGraph, spec) -> None:
    """Check the graph invariants; raises GraphError naming the offending node or edge."""
    _check_node_attrs(graph, spec)
    _check_edges(graph)
    _check_endpoints(graph)
    _check_weights(graph, spec)


def graph_totals(graph: nx.DiGraph) -> dict:
    """Totals: `flops`, `weight_bytes` (each tensor once), `kv_state_bytes`, ops per kind."""
    weights = {a["weight"]: a["weight_bytes"] for _, a in graph.nodes(data=True) if a["weight"]}
    kinds = {}
    for _, attrs in graph.nodes(data=True):
        kinds[attrs["op"]] = kinds.get(attrs["op"], 0) + 1
    return {
        "flops": sum(a["flops"] for _, a in graph.nodes(data=True)),
        "weight_bytes": sum(weights.values()),
        "kv_state_bytes": sum(a.get("state_bytes", 0) for _, a in graph.nodes(data=True)),
        "ops": kinds,
    }


# --------------------------------------------------------------------------- dumping


def _dot_label(name, attrs) -> str:
    """A DOT node label: name, op, output shape."""
    shape = "x".join(map(str, attrs["shape_out"]))
    return f"{name}\\n{attrs['op']} [{shape}]"


def graph_to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT text of a graph (edges labelled with tensor element counts)."""
    lines = [f"digraph {json.dumps(graph.graph.get('kind', 'graph'))} {{", "  rankdir=TB;"]
    for name, attrs in graph.nodes(data=True):
        lines.append(f"  {json.dumps(name)} [label={json.dumps(_dot_label(name, attrs))}];")
    for src, dst, data in graph.edges(data=True):
        lines.append(f"  {json.dumps(src)} -> {json.dumps(dst)} "
                     f"[label={json.dumps(str(data['elements']))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_files(graph: nx.DiGraph) -> dict[str, str]:
    """`graph.json` (networkx node-link form) and `graph.dot`: file name -> text."""
    return {"graph.json": json.dumps(nx.node_link_data(graph, edges="edges"), indent=2) + "\n",
            "graph.dot": graph_to_dot(graph)}


def dump_graph(graph: nx.DiGraph, directory) -> None:
    """Write `graph.json` and `graph.dot` into `directory`, each atomically."""
    directory = Path(directory)
    for name, text in graph_files(graph).items():
        atomic_write_text(directory / name, text)


def load_graph(path) -> nx.DiGraph:
    """Read a `graph.json` written by `dump_graph` (shapes back to tuples)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    graph = nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    for _, attrs in graph.nodes(data=True):
        attrs["shape_in"] = tuple(tuple(s) for s in attrs["shape_in"])
        attrs["shape_out"] = tuple(attrs["shape_out"])
    return graph


# --------------------------------------------------------------------------- interpretation


def _rope(spec, x, first_position):
    """Rotate x [n, heads, d] (rotate_half convention) for positions first_position + i."""
    positions = np.arange(first_position, first_position + x.shape[0], dtype=np.float64)
    angles = np.outer(positions, spec.rope_inv_freq())
    angles = np.concatenate([angles, angles], axis=-1)[:, None, :]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _scores(spec, q, keys, past):
    """Causal scaled scores [h, n, T] of q [n, h, d] against keys [g, T, d]."""
    k = np.repeat(keys, spec.group_size, axis=0)
    scores = np.einsum("nhd,htd->hnt", q, k) * np.float32(spec.head_dim ** -0.5)
    allowed = np.arange(k.shape[1])[None, :] <= past + np.arange(q.shape[0])[:, None]
    return np.where(allowed[None], scores, np.float32(-np.inf))


def _silu_mul(gate, up):
    """silu(gate) * up."""
    with np.errstate(over="ignore"):
        return gate / (np.float32(1) + np.exp(-gate)) * up


def _softmax(x):
    """Max-subtracted softmax over the last axis."""
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kv_append(attrs, new, ctx):
    """Append new [n, g, d] to this layer's cache [g, past, d]; returns [g, T, d]."""
    key = (attrs["layer"], attrs["cache"])
    ctx[key] = np.concatenate([ctx[key], new.transpose(1, 0, 2)], axis=1)
    return ctx[key]


def _rmsnorm(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * w over the last axis."""
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + np.float32(eps)) * w


# op kind -> f(attrs, args, weight, ctx); ctx has "spec", "past" and the per-layer caches.
_SEMANTICS = {
    "embedding": lambda a, x, w, c: w[x[0]],
    "rmsnorm": lambda a, x, w, c: _rmsnorm(x[0], w, c["spec"].rms_norm_eps),
    "matmul": lambda a, x, w, c: (x[0].reshape(x[0].shape[0], -1) @ w.T).reshape(a["shape_out"]),
    "bias_add": lambda a, x, w, c: x[0] + w.reshape(a["shape_out"][1:]),
    "rope": lambda a, x, w, c: _rope(c["spec"], x[0], a["first_position"]),
    "kv_append": lambda a, x, w, c: _kv_append(a, x[0], c),
    "attn_scores": lambda a, x, w, c: _scores(c["spec"], x[0], x[1], c["past"]),
    "softmax": lambda a, x, w, c: _softmax(x[0]),
    "attn_values": lambda a, x, w, c: np.einsum(
        "hnt,htd->nhd", x[0], np.repeat(x[1], c["spec"].group_size, axis=0)),
    "residual_add": lambda a, x, w, c: x[0] + x[1],
    "silu_mul": lambda a, x, w, c: _silu_mul(x[0], x[1]),
    "take_last": lambda a, x, w, c: x[0][-1:],
    "argmax": lambda a, x, w, c: np.argmax(x[0], axis=-1),
}


def interpret_graph(graph: nx.DiGraph, spec, weights: dict, tokens, cache=None):
    """Execute a graph in float32: (values by node name, updated `reference.KVCache`).

    `tokens` are the graph's n new token ids; `cache` holds its `past_tokens` (None for
    prefill). The logits are `values["lm_head"]` (or its bias node), tokens `values["argmax"]`.
    """
    from compiler.reference import KVCache

    cache = cache or KVCache.empty(spec)
    if cache.length != graph.graph["past_tokens"]:
        raise ValueError(f"cache holds {cache.length} tokens, graph expects "
                         f"{graph.graph['past_tokens']}")
    state = {"past": cache.length, "spec": spec}
    for layer in range(spec.num_layers):
        state[(layer, "k")], state[(layer, "v")] = cache.k[layer], cache.v[layer]
    values = {}
    for node in nx.topological_sort(graph):
        attrs = graph.nodes[node]
        preds = sorted(graph.in_edges(node, data=True), key=lambda e: e[2]["port"])
        args = [values[src] for src, _, _ in preds]
        if attrs["op"] == "input":
            values[node] = np.asarray(tokens, np.int64).reshape(attrs["shape_out"])
        else:
            weight = weights[attrs["weight"]] if attrs["weight"] else None
            values[node] = _SEMANTICS[attrs["op"]](attrs, args, weight, state)
    keys = np.stack([state[(layer, "k")] for layer in range(spec.num_layers)])
    vals = np.stack([state[(layer, "v")] for layer in range(spec.num_layers)])
    return values, KVCache(keys.astype(np.float32), vals.astype(np.float32))
