"""The emit pass: shared region code per role, per-PE and per-step parameters, verification."""

import numpy as np
import pytest

from compiler.decode import compile_decode
from compiler.emit import comm_sequences, emit_gemv, pe_role, step_values, verify_program
from compiler.frontend import parse_config
from emulator.hw.mesh import load_mesh
from isa.interpreter import run_reference
from isa.opcodes import SLOT_COLOR, Op

MESH = load_mesh("small")


def spec_of(hidden=32, heads=4, kv_heads=2, ffn=48, vocab=50, layers=1):
    """A small ModelSpec."""
    return parse_config({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
                         "intermediate_size": ffn, "num_hidden_layers": layers,
                         "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                         "vocab_size": vocab, "max_position_embeddings": 64}, "test")


@pytest.mark.parametrize("layout", ["groups", "even"])
def test_regions_are_shared_by_roles(layout):
    mesh = MESH.with_mesh(16, 16)
    compiled = compile_decode(spec_of(), mesh, max_context=32, layout=layout)
    dp = compiled.decode
    program = dp.program
    assert len(program.region_start) == len(dp.roles) < program.num_pes // 4
    for pe in range(program.num_pes):
        x, y = program.pe_xy(pe)
        assert dp.roles[program.pe_region[pe]] == pe_role(compiled.plan, x, y)
    verify_program(dp, mesh, pos=7)


def test_step_parameters():
    spec = spec_of()
    mesh = MESH.with_mesh(4, 2)
    compiled = compile_decode(spec, mesh, max_context=32)
    slots = compiled.placement.slots
    values = step_values(compiled.plan, slots, 9)
    assert slots == 8
    assert list(values["nloc"][0]) == [3, 3, 2, 2]          # positions 0..9 over 4 PEs
    assert list(values["nfree"][1]) == [5, 5, 6, 6]
    assert list(values["store_n"][1]) == [0, spec.head_dim, 0, 0]
    assert (values["slot_off"] == 2 * spec.head_dim).all()
    a, b = compiled.decode.for_position(3), compiled.decode.for_position(9)
    assert np.array_equal(a.code, b.code) and not np.array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="outside the KV capacity"):
        compiled.decode.for_position(32)
    template = compiled.decode.program.params
    steps = [compiled.decode.param_names.index(name) for name in values]
    static = np.setdiff1d(np.arange(template.shape[1]), steps)
    assert (template[:, steps] == 0).all()
    assert np.array_equal(b.params[:, static], template[:, static])
    for name, k in zip(values, steps, strict=True):
        assert np.array_equal(b.params[:, k], values[name].ravel())


def test_program_is_deterministic_and_messages_match():
    mesh = MESH.with_mesh(5, 3)
    first = compile_decode(spec_of(), mesh, max_context=16, layout="even").decode
    second = compile_decode(spec_of(), mesh, max_context=16, layout="even").decode
    assert first.program.equals(second.program)
    sends, recvs = comm_sequences(first.for_position(2))
    assert sum(map(len, sends.values())) > 0 and sum(map(len, recvs.values())) > 0
    result = run_reference(first.for_position(2), mesh, functional=False)
    assert result.cycles > 0


def test_verify_detects_a_mismatched_receive():
    mesh = MESH.with_mesh(4, 4)
    dp = compile_decode(spec_of(), mesh, max_context=16).decode
    code = dp.program.code
    k = int(np.flatnonzero(code["op"] == int(Op.RECV))[0])
    code["op"][k] = int(Op.NOP)
    with pytest.raises(AssertionError):
        verify_program(dp, mesh)


def test_gemv_program_uses_one_vgemv_per_tile():
    mesh = MESH.with_mesh(4, 2)
    gemv = emit_gemv("A", 8, 12, 4, 2, mesh)
    code = gemv.program.region_code(0)
    ops = code["op"]
    assert (ops == int(Op.VMUL)).sum() == 1 and (ops == int(Op.VFMA)).sum() == 0
    assert (ops == int(Op.VGEMV)).sum() == 1
    assert int(code[ops == int(Op.VGEMV)][0]["a"][SLOT_COLOR]) == 12 // 4 - 1


def test_emu_compile_dumps_every_stage(tmp_path):
    from click.testing import CliRunner

    from emulator.cli import main

    out = tmp_path / "dump"
    result = CliRunner().invoke(main, ["compile", "tiny", "--mesh", "4x4", "--max-context",
                                       "16", "--dump", str(out)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"tiles.json", "placement.json", "placement.txt", "routes.json", "summary.json",
            "program.asm", "graph.json"} <= names
    assert any(n.startswith("pe_") and n.endswith(".asm") for n in names)
    assert "vfma" in (out / "pe_0_0.asm").read_text()


@pytest.mark.parametrize("args,needle", [
    (["compile", "no-such-model.json"], "no such model config"),
    (["compile", "tiny", "--mesh", "1x1"], "does not fit"),
    (["compile", "tiny", "--mesh", "3by3"], "--mesh"),
])
def test_emu_compile_errors_are_one_line_exit_2(tmp_path, args, needle):
    from click.testing import CliRunner

    from emulator.cli import main

    result = CliRunner().invoke(main, [*args, "--dump", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert needle in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()
