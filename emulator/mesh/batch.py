"""Batched decode on one mesh: B users, each with its own prompt, position and KV cache
(`BatchDecoder`; the program is compiler/batch_emit.py's, docs/mapping.md "Batched
decode").

The program is compiled for B user slots. A step takes the active users and their
positions (`step({slot: token})`); a user joins a free slot between steps (`join`: its
prompt is prefilled by the numpy reference and its KV cache written into the slot's
slice) and leaves it (`leave`), after which the slot is reused. Idle slots still run the
GEMMs (the program's width is B) and cost what a user at position 0 costs in attention.
Host I/O per step (not counted in cycles): each active user's embedding row into its row
of H (top row, column i at H + u * k_i), its RoPE cos/sin into its rows of COS/SIN (left
column), the per-user step parameters; after the run each user's logits are read from
its row of ACC on the left column (row j at ACC + u * m_vocab_j).
"""

import dataclasses

import numpy as np

from compiler import reference
from compiler.batching import kv_stride, logit_home
from compiler.numerics import dtype_bytes, round_to
from compiler.tile import row_pairs, row_values
from emulator.hw.errors import ConfigError
from emulator.mesh.runtime import MeshDecoder
from isa.program import RunResult


class BatchDecoder(MeshDecoder):
    """One model compiled for `batch` users on a mesh (spread layout), with its SRAM."""

    def __init__(self, spec, weights: dict, mesh, dtype: str = "fp32", engine="numba",
                 batch: int = 2, max_context: int | None = None, layout: str = "auto",
                 head_group: int | None = None):
        """`head_group`: the LM head in groups of that many users (compiler.decode
        .compile_decode; None: all at once when that fits)."""
        super().__init__(spec, weights, mesh, dtype, engine, max_context, layout, batch=batch,
                         head_group=head_group)
        self.batch = batch
        self.lengths: list[int | None] = [None] * batch   # positions held; None: free slot

    # --- users ----------------------------------------------------------------------------
    def join(self, slot: int, prompt_tokens) -> tuple[int, np.ndarray]:
        """A user takes free slot `slot`: its prompt is prefilled (numpy reference) and its
        KV cache written into the slot. Returns (first token, prefill logits at the last
        prompt position)."""
        self._check_slot(slot)
        if self.lengths[slot] is not None:
            raise ConfigError(f"user slot {slot} is taken; leave it first")
        prompt = np.asarray(prompt_tokens, np.int64).reshape(-1)
        logits, cache = reference.prefill(self.spec, self.weights, prompt)
        self.load_user_kv(slot, cache)
        return int(np.argmax(logits[-1])), logits[-1].astype(np.float32)

    def leave(self, slot: int) -> None:
        """The user of `slot` leaves; the slot (and its KV slice) is free for the next."""
        self._check_slot(slot)
        self.lengths[slot] = None

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.batch:
            raise ConfigError(f"user slot {slot} outside 0..{self.batch - 1}")

    def load_user_kv(self, slot: int, cache: "reference.KVCache") -> int:
        """Write a prefilled KV cache into user `slot`'s slice; returns the bytes moved."""
        T = cache.length
        if T > self.placement.max_context:
            raise ConfigError(f"KV cache of {T} positions exceeds max_context "
                              f"{self.placement.max_context} per user")
        self._load_kv_user(slot, round_to(cache.k, self.dtype), round_to(cache.v, self.dtype))
        self.lengths[slot] = T
        return T * self.spec.kv_bytes_per_token(dtype_bytes(self.dtype))

    def _load_kv_user(self, slot: int, k: np.ndarray, v: np.ndarray) -> None:
        """User `slot`'s keys (post-RoPE) and values into its slots of the band rows:
        dim d of a row at d * (B * slots + 1), the user's slots from slot * slots
        (compiler.batching.batch_entries), position t in column t mod pw."""
        plan, pl, bands = self.plan, self.placement, self.plan.bands
        pw, sp, half = plan.pw, kv_stride(plan, pl.slots), self.spec.head_dim // 2
        T = k.shape[2]
        for j in range(bands.rows):
            g, r = bands.group(j), bands.local(j)
            kdims, vdims = row_pairs(bands, r, half), row_values(bands, r)
            for i in range(min(pw, T)):
                pe, t = j * pw + i, np.arange(i, T, pw)
                for layer in range(self.spec.num_layers):
                    for name, values, dims in (("k", k, kdims), ("v", v, vdims)):
                        if not len(dims):
                            continue
                        addr = pl.addr_at(f"L{layer}.{name}", i, j) + slot * pl.slots
                        index = addr + np.arange(len(dims))[:, None] * sp + (t // pw)[None, :]
                        self.sram[pe, index] = values[layer, g][t][:, dims].T

    def _user_inputs(self, slot: int, token: int, pos: int) -> None:
        """User `slot`'s embedding row into its row of H and its RoPE tables into its
        rows of COS/SIN."""
        spec, plan, pl = self.spec, self.plan, self.placement
        emb = self.weights["model.embed_tokens.weight"][token]
        hidden = plan.vec("hidden")
        for i in range(plan.pw):
            k = hidden.size(i)
            addr = pl.addr_at("H", i, 0) + slot * k
            self.sram[i, addr:addr + k] = emb[hidden.start(i):hidden.start(i) + k]
        cos, sin = reference.rope_tables(spec, np.array([pos]))
        bands, reps = plan.bands, spec.group_size + 1
        for j in range(bands.rows):
            r = bands.local(j)
            if not bands.kp[r]:
                continue
            p = slice(bands.kp0[r], bands.kp0[r] + bands.kp[r])
            for name, table in (("COS", cos[0]), ("SIN", sin[0])):
                tiled = round_to(np.tile(table[p], reps), self.dtype)
                addr = pl.addr_at(name, 0, j) + slot * tiled.size
                self.sram[j * plan.pw, addr:addr + tiled.size] = tiled

    def _user_logits(self, slot: int) -> np.ndarray:
        """User `slot`'s logits (float32 [vocab]) from its rows of ACC (left column), or
        of LOG on column 1 + g for a LM head run in groups (compiler.batching.logit_home)."""
        plan, pl, vocab = self.plan, self.placement, self.plan.vec("vocab")
        x, buffer, row = logit_home(plan, slot)
        parts = []
        for j in range(plan.ph):
            m = vocab.size(j)
            addr = pl.addr_at(buffer, x, j) + row * m
            parts.append(self.sram[j * plan.pw + x, addr:addr + m])
        return np.concatenate(parts).astype(np.float32)

    # --- steps ----------------------------------------------------------------------------
    def step_users(self, tokens: dict) -> tuple[dict, RunResult]:
        """One batched step: `tokens` maps each active user slot to the token it decodes
        (at its next position). Returns ({slot: logits float32 [vocab]}, RunResult)."""
        if not tokens:
            raise ConfigError("a batched step needs at least one active user")
        positions = [None] * self.batch
        for slot, token in tokens.items():
            self._check_slot(slot)
            if self.lengths[slot] is None:
                raise ConfigError(f"user slot {slot} is free: join it first")
            if not 0 <= token < self.spec.vocab_size:
                raise ConfigError(f"token id {token} is outside the vocabulary "
                                  f"[0, {self.spec.vocab_size})")
            pos = self.lengths[slot]
            if pos >= self.placement.max_context:
                raise ConfigError(f"user slot {slot}: position {pos} exceeds max_context "
                                  f"{self.placement.max_context} per user")
            positions[slot] = pos
            self._user_inputs(slot, token, pos)
        program = self.compiled.decode.for_users(positions)
        result = self.run(program, self.mesh, sram=self.sram, functional=True, in_place=True)
        self.sram = result.sram
        self.results.append(dataclasses.replace(result, sram=None))
        out = {}
        for slot in tokens:
            self.lengths[slot] += 1
            out[slot] = self._user_logits(slot)
        return out, result

    def generate_users(self, prompts: list, max_new_tokens: int) -> list:
        """Greedy generation for one user per slot (prompts of any lengths, so users sit
        at different positions): [(tokens [N], logits float32 [N, vocab]) per user], row
        0 of the logits from the prefill, row i from batched decode step i."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
        if len(prompts) > self.batch:
            raise ConfigError(f"{len(prompts)} prompts for a batch of {self.batch}")
        tokens, rows = [], []
        for slot, prompt in enumerate(prompts):
            first, logits = self.join(slot, prompt)
            tokens.append([first])
            rows.append([logits])
        for _ in range(max_new_tokens - 1):
            out, _ = self.step_users({u: tokens[u][-1] for u in range(len(prompts))})
            for u, row in out.items():
                rows[u].append(row)
                tokens[u].append(int(np.argmax(row)))
        return [(tokens[u], np.stack(rows[u])) for u in range(len(prompts))]


def run_batch_timing(compiled, mesh, positions, engine: str = "numba",
                     fast_forward: bool = True, jobs: int | None = None) -> RunResult:
    """Timing-only run of a batched step with users at `positions` (None: idle slot)."""
    from compiler.decode import layer_cuts
    from emulator.mesh.runtime import _engine
    from isa.interpreter import run_reference

    run = _engine(engine)
    program = compiled.decode.for_users(list(positions))
    if fast_forward and run is not run_reference:
        return run(program, mesh, functional=False, fast_forward=layer_cuts(compiled),
                   jobs=jobs)
    return run(program, mesh, functional=False)

