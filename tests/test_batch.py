"""Batched decode (compiler/batch_emit.py, emulator/mesh/batch.py; docs/mapping.md,
"Batched decode"): B users on one mesh, each with its own prompt, position and KV cache.

- every user's logits equal the numpy reference for that user's prompt alone (<= 1e-4)
  and, bit for bit, what the one-user program computes for it;
- users join and leave between steps (continuous batching, the slot's KV reused);
- both engines agree bit for bit on batched programs; the fast-forward stays exact;
- the GEMM phase's cycles match the documented closed form exactly;
- a batch that does not fit names the batch and context that fit.
"""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import reference as ref
from compiler.bound import critical_path_bound
from compiler.decode import compile_decode
from compiler.emit import verify_program
from compiler.frontend import resolve_model
from compiler.weights import random_weights
from emulator.cli import main
from emulator.hw.errors import ConfigError, FitError
from emulator.hw.mesh import load_mesh
from emulator.inspect.phases import phase_cycles
from emulator.mesh.batch import BatchDecoder, run_batch_timing
from emulator.mesh.runtime import MeshDecoder
from tests.test_decode_mesh import make_spec, rel_err

TOLERANCE = 1e-4
MAX_CONTEXT = 16


def reference_run(spec, weights, prompt, steps):
    """(tokens, logits [steps + 1, vocab]) of greedy decoding with the numpy reference."""
    logits, cache = ref.prefill(spec, weights, prompt)
    rows = [logits[-1]]
    tokens = [int(np.argmax(rows[0]))]
    for _ in range(steps):
        rows.append(ref.decode_step(spec, weights, tokens[-1], cache))
        tokens.append(int(np.argmax(rows[-1])))
    return tokens, np.stack(rows)


@st.composite
def batch_cases(draw):
    """(spec, mesh shape, prompts) with a mesh of at least one row per kv head."""
    kv = draw(st.integers(1, 4))
    heads = kv * draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([2, 4, 6]))
    llama = draw(st.booleans())
    spec = make_spec("LlamaForCausalLM" if llama else "Qwen2ForCausalLM",
                     draw(st.integers(4, 24)), heads, kv, head_dim,
                     ffn=draw(st.integers(3, 30)), vocab=draw(st.integers(5, 40)),
                     layers=draw(st.integers(1, 2)), tie=draw(st.booleans()),
                     attention_bias=draw(st.booleans()) if llama else None,
                     mlp_bias=draw(st.booleans()) if llama else None)
    shape = draw(st.sampled_from([s for s in [(3, 2), (4, 4), (5, 3), (8, 4), (2, 5)]
                                  if s[1] >= kv]))
    batch = draw(st.integers(2, 3))
    prompts = [draw(st.lists(st.integers(0, spec.vocab_size - 1), min_size=1, max_size=9))
               for _ in range(batch)]
    return spec, shape, prompts


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(batch_cases())
def test_each_user_matches_the_reference_for_its_prompt_alone(case):
    spec, shape, prompts = case
    weights = random_weights(spec, 3)
    mesh = load_mesh("small").with_mesh(*shape)
    decoder = BatchDecoder(spec, weights, mesh, batch=len(prompts), max_context=MAX_CONTEXT)
    steps = 3
    outs = decoder.generate_users(prompts, steps + 1)
    for prompt, (tokens, logits) in zip(prompts, outs, strict=True):
        expected_tokens, expected = reference_run(spec, weights, prompt, steps)
        assert rel_err(logits, expected) <= TOLERANCE
        assert tokens == expected_tokens


def test_batched_logits_equal_the_one_user_program_bit_for_bit():
    """Per-user arithmetic is the one-user step's, op by op (users at different
    positions: prompts of 2, 5 and 1 tokens); equal as floats (+0.0 == -0.0)."""
    spec = make_spec(hidden=20, heads=6, kv_heads=3, head_dim=4, ffn=30, vocab=37,
                     attention_bias=True, mlp_bias=True)
    weights = random_weights(spec, 5)
    mesh = load_mesh("small").with_mesh(4, 3)
    prompts = [[3, 9], [1, 2, 3, 4, 5], [30]]
    batched = BatchDecoder(spec, weights, mesh, batch=3, max_context=MAX_CONTEXT)
    outs = batched.generate_users(prompts, 4)
    for prompt, (tokens, logits) in zip(prompts, outs, strict=True):
        single = MeshDecoder(spec, weights, mesh, max_context=MAX_CONTEXT, layout="spread")
        one_tokens, one_logits = single.generate(prompt, 4)
        assert tokens == one_tokens
        assert np.array_equal(logits, one_logits)


def test_users_join_and_leave_between_steps():
    """Continuous batching: slot 2 joins after a step, slot 0 leaves and a new user takes
    it (its KV slot is reused); every user still matches its reference."""
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=20, vocab=30)
    weights = random_weights(spec, 7)
    mesh = load_mesh("small").with_mesh(4, 4)
    dec = BatchDecoder(spec, weights, mesh, batch=3, max_context=MAX_CONTEXT)
    prompts = {"a": [1, 2, 3, 4, 5, 6, 7], "b": [8], "c": [9, 10, 11], "d": [12, 13]}
    expected = {name: reference_run(spec, weights, p, 4)[1] for name, p in prompts.items()}
    got = {name: [] for name in prompts}
    last = {}

    def join(slot, name):
        token, logits = dec.join(slot, prompts[name])
        got[name].append(logits)
        last[slot] = (name, token)

    def step():
        out, _ = dec.step_users({slot: token for slot, (_, token) in last.items()})
        for slot, logits in out.items():
            name = last[slot][0]
            got[name].append(logits)
            last[slot] = (name, int(np.argmax(logits)))

    join(0, "a")
    join(1, "b")
    step()
    join(2, "c")
    step()
    dec.leave(0)
    del last[0]
    join(0, "d")          # reuses slot 0, whose KV slice still holds user a's positions
    step()
    step()
    for name, rows in got.items():
        rows = np.stack(rows)
        assert rel_err(rows, expected[name][:len(rows)]) <= TOLERANCE, name
    with pytest.raises(ConfigError):
        dec.join(1, [1])                 # taken
    with pytest.raises(ConfigError):
        dec.step_users({5: 1})           # no such slot


def test_engines_agree_bit_for_bit_on_batched_programs():
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=10, vocab=23, layers=1)
    weights = random_weights(spec, 1)
    mesh = load_mesh("small").with_mesh(3, 2)
    decoders = [BatchDecoder(spec, weights, mesh, engine=e, batch=2, max_context=MAX_CONTEXT)
                for e in ("reference", "numba")]
    for dec in decoders:
        dec.generate_users([[1, 2, 3], [4]], 3)
    a, b = decoders
    assert [r.cycles for r in a.results] == [r.cycles for r in b.results]
    assert [r.instructions for r in a.results] == [r.instructions for r in b.results]
    assert np.array_equal(a.sram, b.sram)


def test_fast_forward_is_exact_on_batched_steps():
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=20, vocab=30, layers=5)
    mesh = load_mesh("small").with_mesh(8, 4)
    compiled = compile_decode(spec, mesh, "bf16", 40, batch=4)
    positions = [3, 17, None, 39]
    fast = run_batch_timing(compiled, mesh, positions)
    full = run_batch_timing(compiled, mesh, positions, fast_forward=False)
    assert fast.skipped_blocks > 0
    assert fast.cycles == full.cycles
    assert np.array_equal(fast.mark_first, full.mark_first)
    assert np.array_equal(fast.mark_last, full.mark_last)
    for pos in (0, 39):
        verify_program(compiled.decode, mesh, pos)


def test_batch_one_is_todays_program():
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=20, vocab=30)
    mesh = load_mesh("small").with_mesh(4, 4)
    one = compile_decode(spec, mesh, max_context=MAX_CONTEXT, batch=1).decode.for_position(5)
    today = compile_decode(spec, mesh, max_context=MAX_CONTEXT).decode.for_position(5)
    assert np.array_equal(one.code, today.code)
    assert np.array_equal(one.param_rows, today.param_rows)


def gemm_a_closed_form(pw: int, ph: int, batch: int, k: int, m: int, o: int, h: int, r: int,
                       w: int) -> int:
    """Cycles of the q/k/v GEMM-A phase of a batched step (docs/mapping.md, "Batched
    decode"): from the last PE entering it to the last PE leaving it,

        [o + 2r + (ph-1)h + B k] + L_B(k, m) + log2(pw) (o + 2r + B m) + (pw-1) h
        L_B(k, m) = o + B max(k, 1) ceil(m / w)            (one vgemm)

    (the bracket, the column multicast of the B users' x, is absent when ph == 1)."""
    bcast = o + 2 * r + (ph - 1) * h + batch * k if ph > 1 else 0
    local = o + batch * max(k, 1) * math.ceil(m / w)
    return bcast + local + int(math.log2(pw)) * (o + 2 * r + batch * m) + (pw - 1) * h


@pytest.mark.parametrize("pw,ph,batch,gs,hd,dtype", [
    (2, 1, 2, 1, 2, "fp32"), (4, 2, 3, 2, 4, "fp32"), (8, 4, 5, 1, 2, "bf16"),
    (4, 4, 2, 3, 4, "bf16"), (16, 2, 4, 2, 2, "fp32")])
def test_gemm_phase_cycles_match_the_closed_form(pw, ph, batch, gs, hd, dtype):
    """One kv head per row (so every row holds the same q/k/v chunk, m = (gs + 2) hd) and a
    hidden size divisible by pw (k = hidden / pw on every column); users at different
    positions (the GEMM phase does not depend on them)."""
    hidden = 3 * pw
    spec = make_spec(hidden=hidden, heads=gs * ph, kv_heads=ph, head_dim=hd, ffn=12,
                     vocab=20, layers=2)
    mesh = load_mesh("small").with_mesh(pw, ph)
    compiled = compile_decode(spec, mesh, dtype, 4 * pw, batch=batch)
    positions = [(u * 7) % (4 * pw) for u in range(batch)]
    run = run_batch_timing(compiled, mesh, positions, fast_forward=False)
    phases = phase_cycles(run, compiled.decode.program.mark_names)
    expected = gemm_a_closed_form(pw, ph, batch, hidden // pw, (gs + 2) * hd,
                                  mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency,
                                  mesh.simd_width(dtype))
    assert phases["qkv"] == spec.num_layers * expected


def test_batched_max_context_is_per_user_and_the_fit_error_names_what_fits():
    spec = dataclasses.replace(make_spec(hidden=16, heads=4, kv_heads=2, ffn=20, vocab=30,
                                         layers=2), max_position_embeddings=1 << 20)
    mesh = load_mesh("small").with_mesh(4, 4)
    one = compile_decode(spec, mesh, max_context=MAX_CONTEXT).placement.capacity
    four = compile_decode(spec, mesh, max_context=MAX_CONTEXT, batch=4).placement.capacity
    assert 0 < four < one
    assert four * 4 <= one          # KV capacity is shared by the users
    with pytest.raises(FitError, match=r"at batch 64 a context of \d+ tokens per user would "
                                        r"fit; at a context of 400 tokens per user a batch of "
                                        r"(\d+) would fit") as info:
        compile_decode(spec, mesh, max_context=400, batch=64)
    fits = int(re.search(r"a batch of (\d+) would fit", str(info.value)).group(1))
    compile_decode(spec, mesh, max_context=400, batch=fits)
    with pytest.raises(FitError):
        compile_decode(spec, mesh, max_context=400, batch=fits + 1)


def test_batching_needs_the_spread_layout():
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=20, vocab=30)
    mesh = load_mesh("small").with_mesh(4, 1)
    with pytest.raises(ValueError, match="spread layout"):
        compile_decode(spec, mesh, max_context=MAX_CONTEXT, batch=2)


def cli(*args):
    return CliRunner().invoke(main, ["run", *args], catch_exceptions=False)


def test_emu_run_batch_reports_every_user(tmp_path):
    """`emu run --batch 3` with one prompt per user: report keys, each user's tokens equal
    the reference's greedy tokens for its prompt alone, logits [B, N, vocab]."""
    report, logits = tmp_path / "r.json", tmp_path / "l.npy"
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    text = ";".join(",".join(map(str, p)) for p in prompts)
    result = cli("--batch", "3", "--prompt-tokens", text, "--max-new-tokens", "3",
                 "--dtype", "fp32", "--report", str(report), "--logits", str(logits))
    assert result.exit_code == 0, result.output
    assert "aggregate tokens/s (3 users)" in result.output
    data = json.loads(report.read_text())
    assert data["batch"] == 3 and len(data["users"]) == 3
    assert data["aggregate_tokens_per_s"] == pytest.approx(3 * data["tokens_per_s"])
    spec = resolve_model("tiny")
    weights = random_weights(spec, 0)
    rows = np.load(logits)
    assert rows.shape == (3, 3, spec.vocab_size)
    for u, prompt in enumerate(prompts):
        tokens, expected = reference_run(spec, weights, prompt, 2)
        assert data["users"][u]["prompt_tokens"] == prompt
        assert data["users"][u]["tokens"] == tokens
        assert rel_err(rows[u], expected) <= TOLERANCE


def test_emu_run_batch_sweep_draws_the_curve(tmp_path):
    report = tmp_path / "r.json"
    result = cli("--batch-sweep", "1,2,4", "--timing-only", "--prompt-len", "6",
                 "--max-new-tokens", "2", "--plots", str(tmp_path / "plots"),
                 "--report", str(report))
    assert result.exit_code == 0, result.output
    points = json.loads(report.read_text())["batch_sweep"]
    assert [p["batch"] for p in points] == [1, 2, 4]
    per_user = [p["tokens_per_s"] for p in points]
    aggregate = [p["aggregate_tokens_per_s"] for p in points]
    assert per_user == sorted(per_user, reverse=True)
    assert aggregate == sorted(aggregate)
    png = (tmp_path / "plots" / "batch_sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize("args,needle", [
    (["--batch", "0"], "--batch"),
    (["--batch", "3", "--prompt-tokens", "1,2;3"], "2 prompts separated by ';' for --batch 3"),
    (["--batch", "2", "--mesh", "4x1"], "spread layout"),
    (["--batch", "2", "--batch-sweep", "1,2"], "either --batch or --batch-sweep"),
    (["--batch-sweep", "1,x"], "--batch-sweep"),
    (["--batch", "2", "--hw", "cs3x4", "--timing-only"], "one wafer"),
])
def test_bad_batch_input_exits_2_without_files(tmp_path, args, needle):
    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["run", *args, "--report", str(report)])
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not report.exists()


@pytest.mark.parametrize("shape,batch,dtype", [((4, 4), 3, "fp32"), ((8, 4), 8, "bf16"),
                                               ((3, 2), 2, "fp32")])
def test_the_critical_path_bound_stays_below_batched_steps(shape, batch, dtype):
    spec = make_spec(hidden=24, heads=4, kv_heads=2, ffn=30, vocab=40, layers=2)
    mesh = load_mesh("small").with_mesh(*shape)
    compiled = compile_decode(spec, mesh, dtype, 32, batch=batch)
    for pos in (0, 31):
        run = run_batch_timing(compiled, mesh, [pos] * batch)
        assert run.cycles >= critical_path_bound(compiled, mesh, pos)["total"]


def test_serve_costs_read_emulated_batched_steps(tmp_path):
    """`emu serve --max-batch 4` on one wafer: decode steps come from emulated batched
    steps (exact at the sampled batches and contexts), the KV pool is 4 users' contexts."""
    from emulator.hw.prefill import load_prefill
    from emulator.serve.costs import batch_sizes, measure_costs

    spec, mesh = resolve_model("tiny"), load_mesh("small")
    costs = measure_costs(spec, "tiny", mesh, load_prefill("trn2"), prompt_limit=64,
                          context_limit=64, max_batch=4, cache_dir=tmp_path)
    assert costs.info["batch_model"] == "emulated batched steps"
    assert costs.kv_capacity_tokens == 4 * costs.max_context
    table = costs.batch_table
    assert sorted(set(table[:, 0].astype(int))) == batch_sizes(4) == [1, 2, 4]
    compiled = compile_decode(spec, mesh, "bf16", costs.max_context, batch=4)
    for b, ctx, seconds in table[[0, -1, len(table) // 2]]:
        b, pos = int(b), int(ctx) - 1
        run = run_batch_timing(compiled, mesh, [pos] * b + [None] * (4 - b))
        assert seconds == run.cycles / mesh.clock_hz
        assert costs.decode_step_seconds([int(ctx)] * b) == pytest.approx(seconds)
    three = costs.decode_step_seconds([10] * 3)
    assert costs.decode_step_seconds([10] * 2) <= three <= costs.decode_step_seconds([10] * 4)
    one = measure_costs(spec, "tiny", mesh, load_prefill("trn2"), prompt_limit=64,
                        context_limit=64, cache_dir=tmp_path)
    assert one.batch_table is None          # one user: the single-user table, as before
