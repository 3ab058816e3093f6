"""`rep R, S, steps` (docs/isa.md): the next instruction, a vector op or reduction, R x S
times with its addresses stepped per copy, costing exactly the R * S ops it stands for.

- on random bodies, counts and steps both engines compute bit for bit what the R * S
  unrolled ops compute, in the same cycles (each engine, functional and timing-only);
- faults (a negative count, a copy outside the SRAM) read alike in both engines;
- the validator wants a body; the assembler rejects a constant negative count and the
  disassembler writes `rep` back;
- batched decode, whose attention issues its per-user reductions as reps, keeps the
  cycles, busy cycles and messages the one-op-per-instruction emitter gave (pinned below).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.decode import compile_decode
from emulator.hw.errors import ConfigError, MeshFault
from emulator.hw.mesh import load_mesh
from emulator.mesh.batch import run_batch_timing
from emulator.mesh.engine import run_numba
from isa.asm import AsmError, assemble
from isa.disasm import disassemble
from isa.interpreter import run_reference
from isa.opcodes import Op
from tests.test_decode_mesh import make_spec

SRAM = 128
ONE_PE = load_mesh("small").with_mesh(1, 1)
ENGINES = (run_reference, run_numba)
# (op, operand kinds after dst): s = a source descriptor, i = a float immediate.
BODIES = {"vmov": "s", "vadd": "ss", "vsub": "ss", "vmul": "ss", "vmax": "ss", "vfma": "ss",
          "vscale": "si", "vaddi": "si", "vset": "i", "vexp": "s", "vrsqrt": "s",
          "vrecip": "s", "vsigmoid": "s", "rsum": "s", "rmax": "s", "rdot": "ss",
          "rargmax": "s"}


def program_text(lines: list[str]) -> str:
    """A one-PE program with the given code, SRAM of SRAM elements, one parameter p0 = 2."""
    return "\n".join([".mesh 1x1", f".sram {SRAM}", ".params 1", ".region a 0,0 0,0",
                      ".param p0 = 2", *(f"    {line}" for line in lines), "    halt", ""])


@st.composite
def rep_cases(draw):
    """(rep lines, unrolled lines): a random body op over 0..5 elements, R, S in 0..3,
    steps in -3..6 (descriptors kept inside the SRAM for every copy)."""
    op = draw(st.sampled_from(sorted(BODIES)))
    n, reps, cols = draw(st.integers(0, 5)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
    kinds = BODIES[op]
    slots = 1 + kinds.count("s")
    strides = [0 if op.startswith("r") else draw(st.integers(-1, 2))]
    strides += [draw(st.integers(-1, 2)) for _ in range(slots - 1)]
    outer = [draw(st.integers(-3, 6)) if i < slots else 0 for i in range(3)]   # unused: 0
    inner = [draw(st.integers(-3, 6)) if i < slots else 0 for i in range(3)]
    bases = []
    for i in range(slots):
        offsets = [a * outer[i] + b * inner[i] for a in range(max(reps, 1))
                   for b in range(max(cols, 1))]
        ends = [o + e * strides[i] for o in offsets for e in (0, max(n - 1, 0))]
        bases.append(draw(st.integers(-min(ends), SRAM - 1 - max(ends))))
    imm = draw(st.sampled_from(["0.5", "-1.25", "2", "1e-3"]))

    def body(offset):
        operands = [f"[{bases[0] + offset[0]}:{strides[0]}]"]
        operands += [f"[{bases[i] + offset[i]}:{strides[i]}]" for i in range(1, slots)]
        operands.append(str(n))
        if "i" in kinds:
            operands.append(imm)
        return f"{op} " + ", ".join(operands)

    steps = ", ".join(str(v) for v in outer + inner)
    rep = [f"rep {reps}, {cols}, {steps}", body((0, 0, 0))]
    unrolled = [body([a * outer[i] + b * inner[i] for i in range(3)])
                for a in range(reps) for b in range(cols)]
    return rep, unrolled


@given(rep_cases(), st.integers(0, 2 ** 32 - 1))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rep_equals_the_unrolled_ops_in_both_engines(case, seed):
    rep, unrolled = case
    sram = np.random.default_rng(seed).uniform(-2, 2, (1, SRAM)).astype(np.float32)
    runs = {}
    for name, lines in (("rep", rep), ("unrolled", unrolled)):
        program = assemble(program_text(lines))
        for engine in ENGINES:
            for functional in (True, False):
                runs[name, engine, functional] = engine(program, ONE_PE, sram=sram,
                                                        functional=functional)
    base = runs["unrolled", run_reference, True]
    for (name, _engine, functional), run in runs.items():
        assert run.cycles == base.cycles and np.array_equal(run.pe_busy, base.pe_busy)
        if functional:
            assert np.array_equal(run.sram.view(np.uint32), base.sram.view(np.uint32))
        assert run.instructions == (3 if name == "rep" else len(unrolled) + 1)


def fault_messages(lines: list[str]) -> set[str]:
    """Each engine's MeshFault message (functional and timing-only) for the program."""
    program = assemble(program_text(lines), source="rep.asm")
    messages = set()
    for engine in ENGINES:
        for functional in (True, False):
            with pytest.raises(MeshFault) as fault:
                engine(program, ONE_PE, functional=functional)
            messages.add(str(fault.value))
    return messages


@pytest.mark.parametrize("lines, needle", [
    (["movr r1, -2", "rep r1, 1, 0, 0, 0, 0, 0, 0", "vmov [0], [1], 2"],
     "at cycle 2: negative repeat count -2"),
    (["movr r1, -1", "rep 2, r1, 0, 0, 0, 0, 0, 0", "vmov [0], [1], 2"],
     "negative repeat count -1"),
    (["movr r1, -3", "rep 2, 2, 0, 0, 0, 0, 0, 0", "vmov [0], [1], r1"],
     "negative element count -3"),
    # copy (1, 2) writes [125 .. 128]: the first element outside is 128, found at issue
    (["vset [0], 1, 1.0", "rep 2, 3, 5, 0, 0, 60, 0, 0", "vmov [0], [1], 4"],
     "at cycle 2: SRAM access at element 128 outside 0..127"),
    (["rep 3, 1, 0, -2, 0, 0, 0, 0", "rdot [0], [3], [1], 2"],
     "SRAM access at element -1 outside 0..127"),
])
def test_faults_read_alike_in_both_engines(lines, needle):
    messages = fault_messages(lines)
    assert len(messages) == 1
    assert needle in messages.pop()


@pytest.mark.parametrize("code", [
    ["rep 2, 2, 0, 0, 0, 0, 0, 0"],                                   # the last instruction
    ["rep 2, 2, 0, 0, 0, 0, 0, 0", "movr r1, 2"],                     # a control op
    ["rep 2, 2, 0, 0, 0, 0, 0, 0", "vgemv [0], [4:2], [8], 2, 2"],     # not repeatable
    ["rep 2, 2, 0, 0, 0, 0, 0, 0", "rep 2, 2, 0, 0, 0, 0, 0, 0", "vmov [0], [1], 2"],
])
def test_a_rep_needs_a_vector_op_or_reduction_after_it(code):
    text = "\n".join([".mesh 1x1", f".sram {SRAM}", ".region a 0,0 0,0",
                      *(f"    {line}" for line in code), ""])
    with pytest.raises(ConfigError, match="rep not followed"):
        run_numba(assemble(text, source="rep.asm"), ONE_PE)


def test_the_assembler_rejects_a_negative_constant_count():
    with pytest.raises(AsmError, match="negative repeat count -1"):
        assemble(program_text(["rep 2, -1, 0, 0, 0, 0, 0, 0", "vmov [0], [1], 2"]))


def test_rep_round_trips_through_the_disassembler():
    program = assemble(program_text(["movr r3, 7", "rep %p0, r3, 1, -2, %p0, r3+4, 0, 5",
                                     "rdot [40], [0:2], [8], 3"]))
    again = assemble(disassemble(program))
    assert np.array_equal(again.code, program.code)
    assert "rep %p0, r3, 1, -2, %p0, r3+4, 0, 5" in disassemble(program)


# Cycles, summed busy and finish cycles and messages of batched steps (2 layers, bf16,
# KV capacity 40 per user, full runs) as the emitter gave them before attention used
# `rep` (commit c43016a): (hidden, heads, kv heads, head dim), mesh, user positions.
BEFORE_REP = [
    ((16, 4, 2, 4), (3, 2), [3, 7], (1571, 6567, 9283, 99)),
    ((16, 8, 2, 4), (8, 4), [3, 17, None, 39], (4017, 51780, 126736, 626)),
    ((24, 6, 2, 6), (4, 4), [0, 11, 5], (3016, 23306, 47940, 286)),
    ((12, 3, 3, 2), (5, 3), [1, 2, 3, 4, 30], (2924, 19806, 41555, 286)),
    ((32, 8, 4, 4), (8, 4), [39, 0, None, 20, 21, 7], (4369, 85128, 137304, 650)),
]


@pytest.mark.parametrize("shape, mesh_shape, positions, expected", BEFORE_REP)
def test_batched_steps_cost_what_they_cost_before_rep(shape, mesh_shape, positions,
                                                      expected):
    hidden, heads, kv, head_dim = shape
    spec = make_spec(hidden=hidden, heads=heads, kv_heads=kv, head_dim=head_dim, ffn=20,
                     vocab=30, layers=2)
    mesh = load_mesh("small").with_mesh(*mesh_shape)
    compiled = compile_decode(spec, mesh, "bf16", 40, batch=len(positions))
    assert (compiled.decode.program.code["op"] == Op.REP).any()
    run = run_batch_timing(compiled, mesh, positions, fast_forward=False)
    assert (run.cycles, int(run.pe_busy.sum()), int(run.pe_finish.sum()),
            run.messages) == expected
