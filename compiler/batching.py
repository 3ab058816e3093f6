"""Batched decode (B users on one mesh): which SRAM buffers every user gets a copy of, and
the per-user step parameters (docs/mapping.md, "Batched decode").

A batched plan (`TilePlan.batch` = B > 1, spread layout only) keeps the weights where they
are and gives each user its own activations, RoPE tables, softmax scratch and KV cache:
the place pass multiplies the sizes of the buffers in `PER_USER` by B (`batch_entries`),
so `Placement.capacity` and `max_context` are per user at that batch. User u's copy of a
buffer sits at `base + u * (its one-user size)`, except the buffers laid out for one
message per batch (emit code in compiler/batch_emit.py):

- `H`, `XN` (top row), `XB`, `ACC`: B rows of the PE's own chunk, contiguous (row stride
  = the chunk: `k_hidden` of the column, `m_*` / `k_*` of the row);
- K and V of a layer: dim-major, `B * slots + 1` elements per dim (user u's slots at
  `u * slots`, then one spare slot shared by all users);
- `PM`: the B * group_size maxima, then the scores of user 0, user 1, ... (user u's head
  h at parameter `sc{h}@u`), so one message carries every user's scores;
- `MO`, `MT`: [maxima | sums | weighted values], each B * group_size wide, values
  dim-major (`d * B * gs + u * gs + h`), so a merge step is a few vector ops for all users.

Units: elements.
"""

import numpy as np

# Buffers of which every user has its own copy (the place pass scales their sizes by B).
PER_USER = frozenset({"H", "XN", "SS", "ACC", "XB", "PM", "QKV", "MO", "MT", "NM", "AA",
                      "COS", "SIN", "RL"})


def is_per_user(name: str) -> bool:
    """Buffer `name` has one copy per user: a PER_USER buffer or a layer's KV cache."""
    return name in PER_USER or (name.startswith("L") and name.rsplit(".", 1)[-1] in ("k", "v"))


def batch_entries(plan, entries: list, slots: int) -> list:
    """(name, elements, kind) entries of a class with the per-user buffers `batch` times
    as large (unchanged at batch 1). A layer's K or V of `dims` dims is dim-major with
    `kv_stride(plan, slots)` = B * slots + 1 elements per dim: user u's slots at u * slots,
    then one spare slot all users share (the store of the PEs not owning a new position)."""
    if plan.batch == 1:
        return entries
    out = []
    for name, words, kind in entries:
        if kind == "kv":
            words = words // (slots + 1) * kv_stride(plan, slots)
        elif is_per_user(name):
            words *= plan.batch
        out.append((name, words, kind))
    return out


def kv_stride(plan, slots: int) -> int:
    """Elements per KV dim of a batched plan: B users' `slots` each, one shared spare."""
    return plan.batch * slots + 1


def check_batch(plan) -> None:
    """ValueError unless the plan can be batched: batch >= 1, and > 1 only in the spread
    layout (the per-user attention is the spread layout's, docs/mapping.md)."""
    if plan.batch < 1:
        raise ValueError(f"batch must be a positive integer, got {plan.batch}")
    if plan.batch > 1 and plan.bands is None:
        raise ValueError(f"batched decode (batch {plan.batch}) needs the spread layout: a "
                         f"mesh with at least num_kv_heads ({plan.spec.num_kv_heads}) rows")


def user_step_names(plan) -> list[str]:
    """The step parameters of a batched spread program: per user u `nact@u`, `nfree@u`,
    `kslot@u`, `sc{h}@u`, `mask{h}@u`; then `sc_len`, `pm_len` (all users)."""
    heads = range(plan.spec.group_size)
    names = []
    for u in range(plan.batch):
        names += [f"nact@{u}", f"nfree@{u}", f"kslot@{u}"]
        names += [f"sc{h}@{u}" for h in heads] + [f"mask{h}@{u}" for h in heads]
    return names + ["sc_len", "pm_len"]


def user_step_values(plan, slots: int, positions, pm: int) -> dict:
    """name -> int64 [ph, pw] (read-only views) of `user_step_names` for users at
    `positions` (one entry per user: a position, or None for an idle slot). An idle slot
    runs as a user with one masked slot on every column (its stores go to the spare slot),
    so it costs what a user at position 0 costs. `pm`: the address of PM."""
    pw, ph, gs, batch = plan.pw, plan.ph, plan.spec.group_size, plan.batch
    if len(positions) != batch:
        raise ValueError(f"{len(positions)} positions for a batch of {batch}")
    i = np.arange(pw)
    out, offset = {}, 0
    nacts = [1 if pos is None else pos // pw + 1 for pos in positions]
    base = pm + batch * gs
    for u, pos in enumerate(positions):
        nact = nacts[u]
        spare = batch * slots          # the shared spare slot (`batch_entries`)
        if pos is None:
            nloc, kslot = np.zeros(pw, np.int64), np.full(pw, spare, np.int64)
        else:
            nloc = np.where(i <= pos, (pos - i) // pw + 1, 0)
            kslot = np.where(i == pos % pw, u * slots + pos // pw, spare)
        out[f"nact@{u}"], out[f"nfree@{u}"], out[f"kslot@{u}"] = nact, nact - nloc, kslot
        for h in range(gs):
            sc = base + gs * offset + h * nact
            out[f"sc{h}@{u}"], out[f"mask{h}@{u}"] = sc, sc + nloc
        offset += nact
    out["sc_len"], out["pm_len"] = gs * offset, batch * gs + gs * offset
    return {k: np.broadcast_to(np.asarray(v, np.int64), (ph, pw)) for k, v in out.items()}


def batch_static_values(plan, static: dict) -> dict:
    """The batched programs' message lengths `bm_*` = B * `m_*` (the GEMV outputs of all
    users, one message per tree step)."""
    return {f"b{name}": plan.batch * np.asarray(values, np.int64)
            for name, values in static.items()}


def batch_fit_note(placement, sram_words: int, fit_context) -> str:
    """The FitError hint of a batched placement: the context per user that fits at this
    batch and the largest batch that fits at this context (`fit_context(plan, words)` of
    compiler/place.py, passed in to keep this module free of the place pass)."""
    import dataclasses

    plan, context = placement.plan, placement.max_context
    at_batch = (f"at batch {plan.batch} a context of {placement.capacity} tokens per user "
                f"would fit" if placement.capacity else
                f"at batch {plan.batch} no context fits beside the weights and scratch")
    lo, hi = 0, plan.batch - 1            # largest batch b < B with fit_context >= context
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fit_context(dataclasses.replace(plan, batch=mid), sram_words) >= context:
            lo = mid
        else:
            hi = mid - 1
    at_context = (f"at a context of {context} tokens per user a batch of {lo} would fit"
                  if lo else f"at a context of {context} tokens not even one user fits")
    return f"{at_batch}; {at_context}"
