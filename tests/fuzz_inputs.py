"""Hypothesis strategies of whole `emu` command lines, for the CLI fuzz test.

`invocations(folder)` draws one command (gemm, prefill, compile, map, run, asm run, asm
disasm, step) with its arguments and the files it reads, written into `folder`: model
configs derived from the bundled tiny model with fields replaced by odd values (zero,
negative, huge, Infinity, NaN, strings, null, lists), mesh presets with fields replaced the
same way, assembly from tests/strategies.py (valid programs, then mutated line by line),
output paths (fresh, `-`, an existing folder, under a file, /dev/null), and option values
in and out of range. Sizes stay small enough that an accepted command runs in about a
second; huge sizes are drawn where a guard should refuse them at once.

`run_invocation` runs one through click's CliRunner and classifies it: ("exit", code) or
("crash", traceback text). The contract (docs/reliability.md) is exit 0 or 2, no traceback.
"""

import json
import math
import random
import traceback
from pathlib import Path

from click.testing import CliRunner
from hypothesis import strategies as st
from strategies import generate_program

from emulator.hw.presets import preset_dir

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-05, "hidden_act": "silu", "tie_word_embeddings": False,
        "rope_theta": 10000.0, "torch_dtype": "float32"}
MESH_FIELDS = ("width", "height", "sram_bytes", "clock_hz", "simd_fp32", "simd_fp16",
               "simd_bf16", "hop_latency", "ramp_latency", "num_colors", "issue_overhead",
               "barrier_latency", "wavelet_bytes", "wafers")
ODD = [0, -1, 1, 2, 3, 7, 2**31, 2**62, 2**63, 10**30, 0.5, -0.0, 1e-300, 1e308,
       math.inf, -math.inf, math.nan, "8", "", None, [], {}, True]
SIZES = ["1", "2", "3", "7", "16", "128", "129", "0", "-4", "x", "1e3", "3.5", "",
         "99999999999999999999", "1000000", "10000000000", " 8 "]
MESHES = ["1x1", "2x3", "4x4", "8x8", "16x8", "0x4", "4x", "axb", "-2x2", "1000000x1000000",
          "99999999999999999999x2", "8X8", " 4 x 4 "]
INTS = ["0", "1", "2", "5", "-1", "-5", "255", "256", "2147483648", "99999999999999999999",
        "x", "", "1.5"]


def odd_values():
    return st.sampled_from(ODD) | st.integers(-3, 300) | st.floats(allow_nan=True)


def dump_json(obj) -> str:
    return json.dumps(obj)      # Infinity / NaN are written as the bare words, as a user might


@st.composite
def model_configs(draw, folder: Path) -> str:
    """A model config file path (or a bundled name) with 0-2 odd fields."""
    if draw(st.booleans()):
        return draw(st.sampled_from(["tiny", "nonesuch", "tiny.json"]))
    config = dict(TINY)
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(TINY) + ["head_dim", "attention_bias", "rope_scaling",
                                                  "sliding_window", "bogus"]))
        if draw(st.booleans()):
            config[key] = draw(odd_values())
        else:
            config.pop(key, None)
    path = folder / f"model{draw(st.integers(0, 3))}.json"
    text = dump_json(config)
    if draw(st.integers(0, 9)) == 0:       # truncated or not JSON at all
        text = text[:draw(st.integers(0, len(text)))]
    path.write_text(text)
    return str(path)


@st.composite
def mesh_presets(draw, folder: Path) -> str:
    """A mesh preset: bundled name, unknown name, or a copy of `small` with odd fields."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.sampled_from(["small", "wse2", "wse3", "nonesuch"]))
    data = json.loads(preset_dir().joinpath("mesh-small.json").read_text())
    data.update(width=8, height=8)
    for _ in range(draw(st.integers(1, 2))):
        data[draw(st.sampled_from(MESH_FIELDS + ("bogus",)))] = draw(odd_values())
    path = folder / "mesh.json"
    path.write_text(dump_json(data))
    return str(path)


@st.composite
def output_paths(draw, folder: Path, name: str) -> str:
    (folder / "plain").write_text("x")
    (folder / "sub").mkdir(exist_ok=True)
    return draw(st.sampled_from([str(folder / name), str(folder / "new" / name), "-",
                                 str(folder / "sub"), str(folder / "plain" / name),
                                 "/dev/null", ""]))


@st.composite
def assembly_files(draw, folder: Path) -> str:
    """A generated program (valid), possibly mutated: lines dropped, duplicated, swapped or
    with a token replaced."""
    program = generate_program(draw(st.integers(1, 4)), draw(st.integers(1, 4)),
                               draw(st.integers(0, 2**32 - 1)))
    lines = program.text.splitlines()
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(0, 3))):
        k = rng.randrange(len(lines))
        action = rng.randrange(4)
        if action == 0:
            del lines[k]
        elif action == 1:
            lines.insert(k, lines[rng.randrange(len(lines))])
        elif action == 2:
            words = lines[k].split()
            if words:
                words[rng.randrange(len(words))] = rng.choice(
                    ["0", "-1", "99999999999", "r9", "c31", "[999999]", "1e40", "inf", "nan",
                     "x", ",", "1000000x1000000", "halt", "%p9"])
                lines[k] = " ".join(words)
        elif lines:
            lines[k] = lines[k][:rng.randrange(len(lines[k]) + 1)]
        if not lines:
            break
    path = folder / "prog.asm"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def pick(draw, values):
    return draw(st.sampled_from(values))


@st.composite
def invocations(draw, folder: Path) -> list[str]:
    """One `emu` command line (the files it names are written into `folder`)."""
    command = draw(st.sampled_from(["gemm", "prefill", "compile", "map", "run", "asm run",
                                    "asm disasm", "step", "explain", "bench gemv", "presets",
                                    "usage"]))
    args = command.split()
    if command == "gemm":
        args += [pick(draw, SIZES) for _ in range(3)]
        if draw(st.booleans()):
            args += ["--array", pick(draw, ["128x128", "4x4", "0x4", "x", "1000x1000"])]
        args += ["--dataflow", pick(draw, ["ws", "is", "os", "xx"])]
        if draw(st.booleans()):
            args.append("--scalesim-compat")
        args += ["--dtype", pick(draw, ["bf16", "fp16", "fp32", "int8"]), "--json"]
    elif command == "prefill":
        args += [draw(model_configs(folder)), "--timing-only",
                 "--prompt-len", pick(draw, SIZES[:8] + ["300"])]
        if draw(st.booleans()):
            args += ["--prefill-hw", pick(draw, ["trn2", "trn3", "nonesuch"])]
        if draw(st.booleans()):
            args += ["--seed", pick(draw, INTS)]
        args.append("--json")
    elif command in ("compile", "map"):
        args += [draw(model_configs(folder)), "--mesh", pick(draw, MESHES),
                 "--hw", draw(mesh_presets(folder))]
        if draw(st.booleans()):
            args += ["--max-context", pick(draw, INTS)]
        if draw(st.booleans()):
            args += ["--dtype", pick(draw, ["fp32", "bf16", "fp8"])]
        if command == "compile" and draw(st.booleans()):
            args += ["--dump", draw(output_paths(folder, "dump"))]
        if command == "map" and draw(st.booleans()):
            args += ["--png", draw(output_paths(folder, "map.png"))]
    elif command == "run":
        args += [draw(model_configs(folder)), "--quiet", "--timing-only",
                 "--mesh", pick(draw, ["8x8", "12x12", "16x16", "0x1", "x"]),
                 "--max-new-tokens", pick(draw, ["1", "2", "0", "-1"]),
                 "--prompt-len", pick(draw, ["1", "4", "8", "0", "100000"])]
        if draw(st.booleans()):
            args += ["--hw", draw(mesh_presets(folder))]
        if draw(st.booleans()):
            args += ["--seed", pick(draw, INTS)]
        for option, name in (("--report", "r.json"), ("--trace", "t.json")):
            if draw(st.booleans()):
                args += [option, draw(output_paths(folder, name))]
    elif command in ("asm run", "asm disasm", "step"):
        if command == "step":
            args = ["step"]
        args.append(draw(assembly_files(folder)))
        if draw(st.integers(0, 3)) == 0:
            args += ["--mesh", pick(draw, MESHES)]
        if command == "asm run":
            args += ["--engine", pick(draw, ["numba", "reference"]),
                     "--max-cycles", pick(draw, ["100000", "1", "0", "-1",
                                                 "99999999999999999999"]),
                     "--max-seconds", pick(draw, ["5", "0", "-1", "nan", "inf"]), "--json"]
            if draw(st.booleans()):
                args.append("--timing-only")
        elif command == "asm disasm" and draw(st.booleans()):
            args += ["-o", draw(output_paths(folder, "out.asm"))]
        elif command == "step":
            args += ["--steps", pick(draw, ["0", "3", "-1"]), "--max-seconds", "5",
                     "--max-cycles", "100000"]
            if draw(st.booleans()):
                args += ["--pe", pick(draw, ["0,0", "1,1", "9,9", "x", "-1,0"])]
    elif command == "explain":
        args += [draw(model_configs(folder)), "--mesh", pick(draw, ["4x4", "8x8", "2x2", "x"]),
                 "--pe", pick(draw, ["0,0", "1,2", "3,3", "9,9", "-1,0", "a,b", "1"]),
                 "--position", pick(draw, ["0", "3", "255", "256", "-1"])]
        if draw(st.booleans()):
            args.append("--no-timeline")
    elif command == "bench gemv":
        args += ["--mesh", pick(draw, ["4x4", "8x8", "0x0", "1000000x1000000"]),
                 "--size", pick(draw, ["1", "16", "64", "0", "-3", "10000000000"]),
                 "--hw", draw(mesh_presets(folder)), "--json"]
    elif command == "presets":
        args += [pick(draw, ["", "wse3", "small", "trn2", "efa", "nonesuch"])]
        if draw(st.booleans()):
            args.append("--json")
        args = [a for a in args if a]
    else:
        args = draw(st.lists(st.sampled_from(["run", "gemm", "asm", "--bogus", "-h", "x",
                                              "--mesh", "--seed", "-1", "1"]),
                             max_size=4))
    return args


def run_invocation(main, args: list[str]) -> tuple[str, object]:
    """("exit", code) or ("crash", traceback text) of one in-process `emu` call."""
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text = "".join(traceback.format_exception(*result.exc_info))
        return "crash", text
    if "Traceback (most recent call last)" in result.output:
        return "crash", result.output
    return "exit", result.exit_code
