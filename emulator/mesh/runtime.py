"""Decode runtime on one mesh: pick the engine, run timing-only steps, and keep a compiled
model's SRAM state (weights + KV cache) between functional steps (`MeshDecoder`).

`MeshDecoder` keeps the mesh SRAM between steps: weights are written once by the host,
the KV cache grows in place. Per step the host (not counted in cycles, docs/mapping.md)
1. writes the token's embedding row into H on the top row (R layout),
2. writes cos/sin of the position into COS/SIN on the left column (RoPE tables, tiled
   for the q heads and k of a group, pairs adjacent),
3. fills the per-step parameters (`nloc`, `nfree`, `slot_off`, `store_n`) of the program,
runs the program on the engine and reads the logits from the left column (C layout).
"""

import dataclasses

import numpy as np

from compiler import reference
from compiler.decode import Compiled, compile_decode, layer_cuts, weight_image
from compiler.numerics import (
    canonical_dtype,
    dtype_bytes,
    round_to,
    round_weight_format,
    round_weights,
)
from compiler.place import layer_slots, read_c, write_r
from compiler.tile import rope_pair_order, row_pairs, row_values
from emulator.hw.errors import ConfigError
from emulator.hw.mesh import MeshConfig
from isa.interpreter import run_reference
from isa.program import RunResult

ENGINES = ("numba", "reference")


def run_timing(compiled: Compiled, mesh: MeshConfig, pos: int, engine: str = "numba",
               fast_forward: bool = True, jobs: int | None = None) -> RunResult:
    """Timing-only run of the decode step at position `pos` (no weights or values needed).

    Same cycles as a functional step (timing never depends on values), so this serves
    models too large to hold as an SRAM image on the host. With the Numba engine and
    `fast_forward`, the middle decoder layers are fast-forwarded exactly
    (emulator/mesh/fast_forward.py; `RunResult.skipped_blocks` says how many); the reference
    engine always runs every instruction. `jobs`: processes the fast-forward may run at once
    (emulator.mesh.engine.run_numba; the result does not depend on it).
    """
    run = _engine(engine)
    program = compiled.decode.for_position(pos)
    if fast_forward and run is not run_reference:
        return run(program, mesh, functional=False, fast_forward=layer_cuts(compiled),
                   jobs=jobs)
    return run(program, mesh, functional=False)


def _engine(name: str):
    """The run function of engine `name` (Numba when available, else the reference)."""
    if name not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "numba":
        try:
            from emulator.mesh.engine import run_numba
            return run_numba
        except ImportError:
            return run_reference
    return run_reference


class MeshDecoder:
    """One model compiled onto a mesh, with its SRAM state (weights + KV cache)."""

    def __init__(self, spec, weights: dict, mesh: MeshConfig, dtype: str = "fp32",
                 engine="numba", max_context: int | None = None, layout: str = "auto",
                 head: bool = True, batch: int = 1, weight_dtype: str | None = None,
                 head_group: int | None = None):
        self.spec, self.mesh = spec, mesh
        self.dtype = canonical_dtype(dtype)
        self.compiled = compile_decode(spec, mesh, self.dtype, max_context, layout, head, batch,
                                       weight_dtype, head_group)
        self.plan, self.placement = self.compiled.plan, self.compiled.placement
        self.run = engine if callable(engine) else _engine(engine)
        # MLP / expert tiles hold values of the weight format (fp8, mxfp4), read as dtype
        self.weights = round_weights(round_weight_format(weights, weight_dtype), self.dtype)
        self.sram = weight_image(self.plan, self.placement, self.weights)
        self.length = 0          # positions held in the mesh KV cache
        self.results: list[RunResult] = []

    # --- host side ----------------------------------------------------------------------
    def load_kv(self, cache: "reference.KVCache") -> int:
        """Write a prefilled KV cache into the mesh layout; returns the bytes moved."""
        spec, pl = self.spec, self.placement
        T = cache.length
        if T > pl.max_context:
            raise ConfigError(f"KV cache of {T} positions exceeds max_context {pl.max_context}")
        if self.plan.bands is not None:
            self._load_kv_spread(round_to(cache.k, self.dtype), round_to(cache.v, self.dtype))
            self.length = T
            return T * spec.kv_bytes_per_token(dtype_bytes(self.dtype))
        pair = rope_pair_order(spec.head_dim)
        k = round_to(cache.k[..., pair], self.dtype)
        v = round_to(cache.v, self.dtype)
        for layer in range(spec.num_layers):
            for g in range(spec.num_kv_heads):
                j, a = self._group_row(g)
                for name, values in (("k", k), ("v", v)):
                    self._write_kv(j, pl.addr_at(f"L{layer}.{name}{a}", 0, j), values[layer, g])
        self.length = T
        return T * spec.kv_bytes_per_token(dtype_bytes(self.dtype))

    def _load_kv_spread(self, k: np.ndarray, v: np.ndarray) -> None:
        """Spread layout: keys [layers, kv, T, hd] (post-RoPE) and values into the band
        rows, dim-major: dim d of the row at d * (slots + 1), position t in column
        t mod pw, slot t div pw (docs/mapping.md, "Spread layout")."""
        plan, pl, bands = self.plan, self.placement, self.plan.bands
        pw, half = plan.pw, self.spec.head_dim // 2
        T = k.shape[2]
        for layer in range(self.spec.num_layers):
            sp = layer_slots(plan, layer, pl.slots) + 1
            window = self.spec.window(layer)
            t = np.arange(0 if window is None else max(0, T - window), T)
            entry = t if window is None else t % window      # ring entry of position t
            for j in range(bands.rows):
                g, r = bands.group(j), bands.local(j)
                kdims, vdims = row_pairs(bands, r, half), row_values(bands, r)
                for i in range(min(pw, T)):
                    mine = entry % pw == i
                    pe, slot = j * pw + i, entry[mine] // pw
                    for name, values, dims in (("k", k, kdims), ("v", v, vdims)):
                        addr = pl.addr_at(f"L{layer}.{name}", i, j)
                        for n, d in enumerate(dims):
                            self.sram[pe, addr + n * sp + slot] = values[layer, g, t[mine], d]
                    if self.spec.qk_norm and r == 0:   # cached keys are normalised already
                        self.sram[pe, pl.addr_at(f"L{layer}.rk", i, j) + slot] = 1.0

    def _rope_rows(self, cos: np.ndarray, sin: np.ndarray) -> None:
        """Spread layout: each band row's cos/sin of its RoPE pairs, repeated for every
        q head and k, into COS/SIN of its left PE."""
        plan, bands, reps = self.plan, self.plan.bands, self.spec.group_size + 1
        for j in range(bands.rows):
            r = bands.local(j)
            if not bands.kp[r]:
                continue
            p = slice(bands.kp0[r], bands.kp0[r] + bands.kp[r])
            for name, table in (("COS", cos), ("SIN", sin)):
                tiled = round_to(np.tile(table[p], reps), self.dtype)
                addr = self.placement.addr_at(name, 0, j)
                self.sram[j * plan.pw, addr:addr + tiled.size] = tiled

    def _group_row(self, g: int) -> tuple[int, int]:
        """(row, index within the row) of kv group g."""
        bounds = self.plan.vec("groups").bounds
        j = int(np.searchsorted(bounds, g, side="right")) - 1
        return j, g - bounds[j]

    def _write_kv(self, j: int, addr: int, values: np.ndarray) -> None:
        """values [T, head_dim] -> slots on row j (position t on PE t mod pw, slot t div pw)."""
        pw, slots, hd = self.plan.pw, self.placement.slots, self.spec.head_dim
        for i in range(min(pw, len(values))):
            mine = values[i::pw]
            block = self.sram[j * pw + i, addr:addr + hd * slots].reshape(slots, hd)
            block[:len(mine)] = mine

    def _host_inputs(self, token: int, pos: int, hidden: np.ndarray | None = None) -> None:
        """Embedding row (or `hidden`, the previous wafer's residual stream) into H on the
        top row; RoPE cos/sin tables into COS/SIN (left column of the attention rows)."""
        spec, plan, pl = self.spec, self.plan, self.placement
        emb = self.weights["model.embed_tokens.weight"][token] if hidden is None else hidden
        write_r(self.sram, plan, "hidden", emb, pl.addr("H"))
        if not spec.num_layers:   # a head-slice program: no attention, no RoPE tables
            return
        cos, sin = reference.rope_tables(spec, np.array([pos]))
        half, reps = spec.head_dim // 2, spec.group_size + 1
        if plan.bands is not None:
            self._rope_rows(cos[0], sin[0])
            return
        rows = np.flatnonzero(plan.vec("groups").sizes())
        for name, table in (("COS", cos), ("SIN", sin)):
            tiled = round_to(np.tile(table[0, :half], reps), self.dtype)
            for j in rows:
                addr = pl.addr_at(name, 0, int(j))
                self.sram[j * plan.pw, addr:addr + tiled.size] = tiled

    # --- steps --------------------------------------------------------------------------
    def step(self, token: int, pos: int,
             hidden: np.ndarray | None = None) -> tuple[np.ndarray, RunResult]:
        """One decode step of `token` at position `pos`: (logits float32 [vocab], RunResult).

        `hidden`: the residual stream entering this mesh (a later wafer of a system)
        instead of the token's embedding. Logits are empty without the LM head.
        The engine runs in place on `self.sram` (no copy of the SRAM image per step), so
        after a MeshFault the SRAM holds the step's partial results (KV cache and
        activations written before the fault): build a new decoder to go on.
        """
        if not 0 <= token < self.spec.vocab_size:
            raise ConfigError(f"token id {token} is outside the vocabulary "
                              f"[0, {self.spec.vocab_size})")
        if not 0 <= pos <= self.length:
            raise ConfigError(f"position {pos}: the mesh KV cache holds {self.length} "
                              f"positions, so the next position is {self.length}")
        if pos >= self.placement.max_context:
            raise ConfigError(f"position {pos} exceeds max_context {self.placement.max_context}")
        self._host_inputs(token, pos, hidden)
        program = self.compiled.decode.for_position(pos)
        result = self.run(program, self.mesh, sram=self.sram, functional=True, in_place=True)
        self.sram = result.sram   # the same array (an engine hook may return a copy)
        self.length = pos + 1
        self.results.append(dataclasses.replace(result, sram=None))  # SRAM lives in self.sram
        logits = read_c(self.sram, self.plan, "vocab", self.placement.addr("ACC"))
        return logits, result

    def generate(self, prompt_tokens, max_new_tokens: int) -> tuple[list[int], np.ndarray]:
        """Greedy generation: prefill with the numpy reference, decode on the mesh.

        Returns (new tokens [N], logits float32 [N, vocab]); row 0 is the prefill's logits
        at the last prompt position, row i the mesh logits of decode step i.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
        prompt = np.asarray(prompt_tokens, np.int64).reshape(-1)
        logits, cache = reference.prefill(self.spec, self.weights, prompt)
        self.load_kv(cache)
        rows = [logits[-1]]
        tokens = [int(np.argmax(rows[0]))]
        for n in range(max_new_tokens - 1):
            row, _ = self.step(tokens[-1], len(prompt) + n)
            rows.append(row)
            tokens.append(int(np.argmax(row)))
        return tokens, np.stack(rows).astype(np.float32)
