"""Resource guards (emulator/limits.py), numeric validation and the reference engine's budget.

Each huge-but-well-formed size is refused at once with exit 2 and one line naming the bytes
needed and the limit; Infinity, NaN and out-of-range numbers in presets and model configs
are refused naming the field; the reference engine stops at its wall-clock budget.
"""

import json
import re
import time

import pytest
from click.testing import CliRunner

from emulator.cli import main
from emulator.hw.errors import ConfigError, ResourceError
from emulator.limits import ENV_MEMORY, check_memory, memory_limit, parse_bytes

TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 256, "max_position_embeddings": 256}
LIMIT_LINE = re.compile(r"^emu: error: .* needs about .* \(([\d,]+) bytes\) of host memory, "
                        r"more than the limit of .* \(([\d,]+) bytes")


def emu(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def refused(result, limit=None):
    """The one-line refusal: exit 2, need > limit, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    match = LIMIT_LINE.match(result.output)
    assert match, result.output
    need, stated = (int(g.replace(",", "")) for g in match.groups())
    assert need > stated
    if limit is not None:
        assert stated == limit
    return need


def write_config(tmp_path, **fields):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**TINY, **fields}))
    return path


# ------------------------------------------------------------------ the limit


def test_parse_bytes():
    assert parse_bytes("123") == 123
    assert parse_bytes("8G") == 8 * 10**9
    assert parse_bytes("1.5GiB") == 3 * 2**29
    assert parse_bytes("512 MiB") == 512 * 2**20
    for bad in ("", "-5", "lots", "0", "1e999", "nan"):
        with pytest.raises(ConfigError, match=ENV_MEMORY):
            parse_bytes(bad)


def test_limit_defaults_to_available_memory_and_is_settable(monkeypatch):
    monkeypatch.delenv(ENV_MEMORY, raising=False)
    assert 2**20 < memory_limit() < 2**50
    monkeypatch.setenv(ENV_MEMORY, "1M")
    assert memory_limit() == 10**6
    with pytest.raises(ResourceError, match=r"needs about 2 MB .*limit of 1 MB .*"
                                            r"EMU_MEMORY_LIMIT=1M"):
        check_memory(2 * 10**6, "this")
    check_memory(10**6, "this")


# ------------------------------------------------------------------ each big array class


def test_huge_gemm_is_refused_at_once():
    started = time.perf_counter()
    refused(emu("gemm", 10**7, 10**7, 64))
    refused(emu("gemm", 1024, 1024, 1024, env={ENV_MEMORY: "1M"}), limit=10**6)
    assert time.perf_counter() - started < 5
    assert emu("gemm", 1024, 1024, 1024, "--json").exit_code == 0


@pytest.mark.parametrize("field,value", [("hidden_size", 2**20), ("vocab_size", 10**11)])
def test_huge_model_functional_run_is_refused(tmp_path, field, value):
    """Random float32 weights of a huge hidden size or vocabulary: refused before any
    array exists (a timing-only map of the same model still works)."""
    extra = {"intermediate_size": 4 * value} if field == "hidden_size" else {}
    config = write_config(tmp_path, **{field: value, **extra})
    started = time.perf_counter()
    refused(emu("run", config, "--quiet"))
    assert time.perf_counter() - started < 10


def test_functional_prefill_of_an_8b_model_is_refused(tmp_path):
    """Llama-3.1-8B's shape fits trn2's HBM in bf16, but its float32 weights do not fit
    the host limit: refused before lowering."""
    config = write_config(tmp_path, hidden_size=4096, intermediate_size=14336,
                          num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          vocab_size=128256, max_position_embeddings=8192)
    started = time.perf_counter()
    refused(emu("prefill", config, env={ENV_MEMORY: "16G"}), limit=16 * 10**9)
    assert time.perf_counter() - started < 10


def test_prefill_instruction_bound_holds():
    """The lowering's instruction count stays under the guard's bound (tiny models, where
    lowering is fast; the 8B and 70B measurements are in prefill_instructions' docstring)."""
    from compiler.frontend import resolve_model
    from emulator.hw.prefill import load_prefill
    from emulator.prefill.run import prefill_instructions, run_prefill

    hw = load_prefill("trn2")
    for name in ("tiny", "tiny-gqa", "tiny-qwen2"):
        spec = resolve_model(name if name == "tiny" else f"programs/models/{name}.json")
        for tokens in (1, 129, 250):
            lowered = len(run_prefill(spec, hw, tokens, timing_only=True).program)
            assert lowered <= prefill_instructions(spec, hw, tokens) <= 40 * lowered


def test_large_prefill_timing_is_refused_under_a_low_limit():
    started = time.perf_counter()
    refused(emu("prefill", "programs/models/llama-3.1-8b.json", "--timing-only",
                "--prompt-len", 8192, env={ENV_MEMORY: "1G"}), limit=10**9)
    assert time.perf_counter() - started < 5


def test_huge_mesh_is_refused(tmp_path):
    refused(emu("map", "tiny", "--mesh", "100000x100000"))
    refused(emu("run", "--mesh", "60000x60000", "--quiet"))
    preset = json.loads(open(_preset_path("small")).read())
    preset.update(width=10**6, height=10**6)
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps(preset))
    refused(emu("compile", "tiny", "--hw", path))


def _preset_path(name):
    from emulator.hw.presets import preset_dir

    return str(preset_dir().joinpath(f"mesh-{name}.json"))


def test_huge_assembly_mesh_is_refused(tmp_path):
    path = tmp_path / "big.asm"
    path.write_text(".mesh 1000000x1000000\n.region all 0,0 999999,999999\n    halt\n")
    started = time.perf_counter()
    refused(emu("asm", "run", path))
    refused(emu("asm", "disasm", path))
    assert time.perf_counter() - started < 5


def test_functional_sram_image_is_refused_but_timing_only_runs(tmp_path):
    """A 256x256 program with 48 KB of SRAM per PE: a functional run needs the float32
    SRAM image (6.4 GB with its copy), a timing-only run does not."""
    path = tmp_path / "sram.asm"
    path.write_text(".mesh 256x256\n.sram 12288\n.region all 0,0 255,255\n    halt\n")
    env = {ENV_MEMORY: "1G"}
    refused(emu("asm", "run", path, "--hw", "wse3", env=env), limit=10**9)
    refused(emu("asm", "run", path, "--engine", "reference", env=env), limit=10**9)
    result = emu("asm", "run", path, "--timing-only", "--json", env=env)
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("value,needle", [
    ("Infinity", "must be a finite number, got inf"),
    ("NaN", "must be a finite number, got nan"),
    ("-Infinity", "must be a finite number"),
    ("1e999", "must be a finite number"),
    (str(2**70), "out of range"),
])
def test_preset_numbers_must_be_finite(tmp_path, value, needle):
    text = open(_preset_path("small")).read()
    field = "clock_hz" if "Infinity" in value or "N" in value or "e" in value else "hop_latency"
    data = json.loads(text)
    data.pop(field)
    body = json.dumps(data)[:-1] + f', "{field}": {value}}}'
    path = tmp_path / "mesh.json"
    path.write_text(body)
    result = emu("run", "--hw", path, "--quiet", "--report", tmp_path / "r.json")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert f"field '{field}'" in result.output and needle in result.output
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("text,needle", [
    ('"rms_norm_eps": Infinity', "rms_norm_eps"),
    ('"rope_theta": NaN', "rope_theta"),
    ('"hidden_size": 1' + "0" * 30, "hidden_size"),
    ('"vocab_size": ' + "9" * 5000, "unreadable JSON"),
    ('"x": ' + "[" * 100000 + "]" * 100000, "unreadable JSON"),
])
def test_model_config_numbers(tmp_path, text, needle):
    body = json.dumps(TINY)[:-1] + ", " + text + "}"
    path = tmp_path / "model.json"
    path.write_text(body)
    result = emu("compile", path, "--mesh", "8x8")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and needle in result.output


@pytest.mark.parametrize("command", [["run", "--quiet"], ["prefill", "tiny"],
                                     ["step", "tiny", "--steps", "1"]])
def test_negative_seed_is_one_line(command):
    result = emu(*command, "--seed", "-1")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "'--seed': -1 is not in the range" in \
        result.output


def test_random_weights_refuse_a_negative_seed():
    from compiler.frontend import resolve_model
    from compiler.weights import random_weights

    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        random_weights(resolve_model("tiny"), -3)


def test_usage_errors_are_one_line():
    result = emu("asm")
    assert result.exit_code == 2 and result.output.startswith("Usage: ")   # asked for help
    for args in (["run", "--bogus"], ["gemm", "1"], ["nonesuch"],
                 ["run", "--max-new-tokens", "x"], ["asm", "run", "f", "--max-cycles",
                                                    str(10**30)]):
        result = emu(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("emu: error: ") and result.output.count("\n") == 1


# ------------------------------------------------------------------ reference budget

LOOP = """.mesh 1x1
.region all 0,0 0,0
top:
    nop
    jmp top
"""


@pytest.mark.parametrize("command", [["asm", "run", "{}", "--engine", "reference"],
                                     ["step", "{}", "--steps", "1"]])
def test_reference_engine_budget(tmp_path, command):
    path = tmp_path / "loop.asm"
    path.write_text(LOOP)
    started = time.perf_counter()
    result = emu(*(str(path) if a == "{}" else a for a in command), "--max-seconds", "0.5",
                 "--max-cycles", str(2**60))
    elapsed = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1].startswith("emu: error: ")
    assert "time budget of 0.5 s ran out" in result.output
    assert elapsed < 5
