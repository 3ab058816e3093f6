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

When the B users' LM-head accumulator does not fit (Llama-3.1-8B on wse3 at batch 64), the
LM head runs in groups of `TilePlan.head_group` users (`head_groups`): each group's
logits reach ACC of the left column and are then multicast along the row to the PE of
column 1 + g (its buffer `LOG`), before the next group's GEMM overwrites ACC. Such a
plan also packs the buffers whose lifetimes do not overlap into one region at ACC
(`PACKED`): ACC of the layers (B rows), the head group's accumulator `HACC`, the merge
state and scratch of attention (`MO`, `MT`, `NM`, `AA`: attention only) and `XB` (after
the larger of the layers' ACC and MO, which are live while XB is).

Units: elements.
"""

import numpy as np

# Buffers of which every user has its own copy (the place pass scales their sizes by B).
PER_USER = frozenset({"H", "XN", "SS", "ACC", "XB", "PM", "QKV", "MO", "MT", "NM", "AA",
                      "COS", "SIN", "RL"})


# Buffers a grouped-head plan packs into the region at ACC (`batch_entries`).
PACKED = ("HACC", "MO", "MT", "NM", "AA", "XB")


def grouped(plan) -> bool:
    """The plan runs its LM head in several groups of users (`head_groups`)."""
    return plan.batch > 1 and plan.head and 0 < plan.head_group < plan.batch


def head_groups(plan) -> list[tuple[int, int]]:
    """(first user, users) of every LM-head group in order: one group of all B users,
    or groups of `head_group` users (the last one the remainder)."""
    size = plan.head_group if grouped(plan) else plan.batch
    return [(u, min(size, plan.batch - u)) for u in range(0, plan.batch, size)]


def logit_home(plan, user: int) -> tuple[int, str, int]:
    """(column, buffer, row) where `user`'s logits are after a step: row `row` (of the
    row's vocabulary chunk) of ACC on the left column, or of LOG on column 1 + g for the
    user's head group g in a grouped plan."""
    if not grouped(plan):
        return 0, "ACC", user
    return 1 + user // plan.head_group, "LOG", user % plan.head_group


def head_group_candidates(batch: int, pw: int) -> list[int]:
    """Head group sizes a batched compile tries after the whole batch (largest first):
    ceil(B / n) for n = 2, 3, ... while the n groups find a storing column each (n < pw)."""
    out = []
    for n in range(2, min(batch, pw - 1) + 1):
        g = -(-batch // n)
        if g not in out and -(-batch // g) <= pw - 1:
            out.append(g)
    return out


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
    return pack_entries(out) if grouped(plan) else out


def pack_entries(entries: list) -> list:
    """A grouped-head plan's entries with the `PACKED` buffers inside the region at ACC:
    (name, words, kind, offset into ACC) for those, ACC grown to hold them. HACC and MO
    at 0 (ACC of the layers is dead in attention and in the head), MT, NM, AA after MO,
    XB after the larger of the layers' ACC and MO (it is written while MO is live and
    read while the layers' ACC is written)."""
    size = {name: words for name, words, _ in entries}
    acc, mo = size["ACC"], size.get("MO", 0)
    offsets, at = {"HACC": 0, "MO": 0}, mo
    for name in ("MT", "NM", "AA"):
        offsets[name], at = at, at + size.get(name, 0)
    offsets["XB"] = max(acc, mo)
    region = max([acc] + [offsets[n] + size[n] for n in PACKED if n in size])
    out = []
    for name, words, kind in entries:
        if name == "ACC":
            out.append((name, region, kind))
        elif name in PACKED:
            out.append((name, words, kind, offsets[name]))
        else:
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
    users, one message per tree step); a grouped head adds `h{n}m_vocab` = n * m_vocab
    for every group size n (`head_groups`)."""
    out = {f"b{name}": plan.batch * np.asarray(values, np.int64)
           for name, values in static.items()}
    if grouped(plan):
        for _, n in head_groups(plan):
            out[f"h{n}m_vocab"] = n * np.asarray(static["m_vocab"], np.int64)
    return out


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
