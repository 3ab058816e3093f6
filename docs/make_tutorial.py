"""Generate docs/tutorial.md (and its pictures in docs/images/) by running the real commands.

    python docs/make_tutorial.py [--out docs/tutorial.md]

Every command shown in the tutorial is run here with the installed `emu` (or
`python -c "from emulator.cli import main; main()"` when `emu` is not on PATH), and its
output is pasted in verbatim; long outputs are cut with a marked `[...]` line, never edited.
The two maps are written to docs/images/ by `emu map --png`. Rich tables are rendered
`COLUMNS` characters wide. The op-graph dump goes to a temporary directory. Takes about half a
minute (functional decode steps on the reference interpreter, several compiles).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator.files import atomic_write_text  # noqa: E402

COLUMNS = 120
MESH = "8x8"
TINY_PNG = "docs/images/tiny_8x8_map.png"
WAFER_PNG = "docs/images/llama-3.1-8b_wse3_map.png"
LLAMA = "programs/models/llama-3.1-8b.json"
TINY_CONFIG = "emulator/models/tiny.json"


def emu_command() -> list[str]:
    """The emu entry point: the console script, or the click group through Python."""
    script = shutil.which("emu")
    return [script] if script else [sys.executable, "-c",
                                    "from emulator.cli import main; main()"]


def run(args: list[str], cwd: Path = ROOT) -> str:
    """Run `emu ARGS` and return its stdout (stderr appended when the command warns)."""
    env = dict(os.environ, COLUMNS=str(COLUMNS), NO_COLOR="1")
    done = subprocess.run(emu_command() + args, cwd=cwd, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"emu {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout + (f"(stderr) {done.stderr}" if done.stderr.strip() else "")


def shell(args: list[str], output: str) -> str:
    """A fenced block showing the command line and its output."""
    return f"```text\n$ emu {' '.join(args)}\n{output.rstrip()}\n```\n"


def cut(text: str, head: int, tail: int = 0) -> str:
    """The first `head` and last `tail` lines of `text`, with the cut marked."""
    lines = text.rstrip().splitlines()
    if len(lines) <= head + tail:
        return text
    kept = lines[:head] + [f"[... {len(lines) - head - tail} lines not shown ...]"]
    return "\n".join(kept + (lines[-tail:] if tail else [])) + "\n"


def between(text: str, start: str, end: str | None = None) -> str:
    """The lines from the first one starting with `start` up to (not including) `end`."""
    lines = text.splitlines()
    first = next(k for k, line in enumerate(lines) if line.startswith(start))
    last = next((k for k, line in enumerate(lines) if end and k > first
                 and line.startswith(end)), len(lines))
    return "\n".join(lines[first:last]) + "\n"


def command(args: list[str], head: int | None = None, tail: int = 0,
            cwd: Path = ROOT) -> str:
    """Run, optionally cut, and format one command."""
    output = run(args, cwd)
    return shell(args, cut(output, head, tail) if head else output)


# --------------------------------------------------------------------------- sections


def intro() -> str:
    return f"""# Tutorial: from `config.json` to one core's program

This walks the bundled tiny model (`{TINY_CONFIG}`) through every stage of emu's
decode compiler and onto the wafer mesh, then steps through one decode step event by event.
Every block below is the real output of the command above it, pasted in by
`docs/make_tutorial.py` (run `python docs/make_tutorial.py` to regenerate this file).

We use an {MESH} mesh (`--mesh {MESH}` on the `small` preset, which has the PE parameters
of a WSE-3): large enough that every kind of PE appears, small enough to read every PE.
docs/mapping.md is the reference for everything shown here.

"""


def model_section() -> str:
    config = (ROOT / TINY_CONFIG).read_text()
    return f"""## 1. The model: a HuggingFace config.json

```json
{config.rstrip()}
```

A Llama-style decoder: {json.loads(config)["num_hidden_layers"]} layers, grouped-query
attention (several query heads share one key/value head: the *kv groups* of the maps below),
a SwiGLU MLP, RMSNorm. `compiler/frontend.py` turns it into a `ModelSpec`.

"""


def graph_section(workdir: Path) -> str:
    args = ["compile", "tiny", "--mesh", MESH, "--dump", "tiny-dump"]
    out = shell(args, run(args, cwd=workdir))
    dot = (workdir / "tiny-dump" / "graph.dot").read_text().splitlines()
    layer0 = [line for line in dot if '"layers.0.' in line and "->" not in line]
    return f"""## 2. The op graph: one decode step

`emu compile --dump DIR` runs every compiler stage and writes each one to DIR. The summary
says how many *regions* of shared code the step compiled to (PEs with the same role run the
same code) and how many bytes of SRAM every PE needs:

{out}
The first file is the op graph of one decode step (`graph.json`, `graph.dot`: one token,
one position). Its nodes for layer 0 (from `tiny-dump/graph.dot`), each `op [output shape]`:

```text
{chr(10).join(layer0)}
```

"""


def tiles_section(workdir: Path) -> str:
    tiles = json.loads((workdir / "tiny-dump" / "tiles.json").read_text())
    rows = [f"{name:<11} {v['axis']}     {v['bounds']}" for name, v in tiles["vectors"].items()]
    mats = [f"{name:<8} GEMV-{m['kind']}  {m['shape'][0]:>4} x {m['shape'][1]:<4}  "
            f"out {m['out']:<6} in {m['in']:<7} column stride {m['column_stride']}, "
            f"up to {m['max_columns']} columns per PE"
            for name, m in tiles["matrices"].items()]
    return f"""## 3. The tiles: how vectors and matrices are split

The whole step runs on the whole mesh, and every PE holds a tile of every weight matrix.
A vector is either in **R** layout (split over the columns, chunk `i` on the top-row PE
`(i, 0)`) or in **C** layout (split over the rows, chunk `j` on the left-column PE `(0, j)`).
A **GEMV-A** takes an R vector to a C vector: PE `(i, j)` holds rows of chunk `j` times
columns of chunk `i`; **GEMV-B** is the transpose. From `tiny-dump/tiles.json` (bounds are
element offsets of the chunks):

```text
vector      axis  chunk bounds
{chr(10).join(rows)}
```

```text
{chr(10).join(mats)}
```

q, k and v are one matrix whose rows go kv group by kv group (a group's query heads, then
its key head, then its value head). In the `spread` layout (the default on meshes with a
row per kv head) each kv group owns a band of rows: the q/k/v outputs of the group land on
its band, whose PEs hold that group's KV cache (head dims over the rows, positions over the
columns) and score their slice of positions; the band's partial softmax states merge along
the rows (docs/mapping.md).

"""


def map_section() -> str:
    small = command(["map", "tiny", "--mesh", MESH, "--png", TINY_PNG])
    layer = command(["map", "tiny", "--mesh", MESH, "--layer", "0", "--region", "0,0,2,2"])
    wafer_args = ["map", LLAMA, "--hw", "wse3", "--dtype", "bf16", "--width", "48",
                  "--png", WAFER_PNG]
    wafer_out = run(wafer_args)
    wafer = shell(wafer_args, cut(wafer_out, 16) + between(wafer_out, "legend"))
    return f"""## 4. The placement: what each PE holds and does

`emu map` runs the tile and place passes and draws the mesh. Each PE gets a role: the root
`(0,0)`, the top row (the residual stream lives there), the left column (GEMV-A results
arrive there), the attention rows (the bands holding the KV cache of their kv groups), the GEMV
tiles, idle PEs. On the right, which kv groups each attention row serves:

{small}
![tiny model on an 8x8 mesh]({TINY_PNG.removeprefix("docs/")})

Every PE of a class (the same role and, in the spread layout, the same kind of band row)
uses the same SRAM address map, so the code they share can use immediate addresses; the
SRAM figures of the map (title, legend, cells, bar) are these reservations. `--layer N`
lists layer N's buffers with their addresses and, on a small `--region`, each PE's tile
shapes (rows x columns) and KV bytes:

{layer}
### The same on a whole wafer

Llama-3.1-8B on a whole WSE-3 (755 x 1170 PEs) in bf16. The terminal map is downsampled
(each character a block of PEs, the block's majority role), and the picture draws the wafer
with its one-PE-wide rows as lines, beside a zoom of its corner:

{wafer}
![Llama-3.1-8B on a WSE-3]({WAFER_PNG.removeprefix("docs/")})

{wafer_note()}
"""


def wafer_note() -> str:
    """Whether Llama-3.1-8B fits and where its SRAM goes, from the placement itself."""
    from compiler.frontend import resolve_model
    from emulator.hw.mesh import load_mesh
    from emulator.views.mapview import build_map

    m = build_map(resolve_model(ROOT / LLAMA), load_mesh("wse3"), "bf16")
    weights = m.spec.param_count() * m.bytes_per_element
    wafer = m.mesh.num_pes * m.mesh.sram_bytes
    kinds = m.bytes_by_kind()
    verdict = ("It fits" if m.fits else "It does not fit, and the map says by how much")
    return f"""{verdict}: the weights ({weights / 1e9:.1f} GB) are {weights / wafer:.0%} of
the wafer's {wafer / 1e9:.1f} GB of SRAM, and the fullest PE class needs
{m.placement.total_bytes:,} B of its {m.mesh.sram_bytes:,} B (weights {kinds["weight"]:,} B,
KV {kinds["kv"]:,} B, scratch {kinds["scratch"]:,} B) at the default context of
{m.placement.max_context:,} tokens. In the `{m.plan.layout}` layout the KV cache is spread
over the bands of rows that hold each kv group (docs/mapping.md), so the context grows with
the SRAM left: `--max-context` up to the model's 131,072 positions still fits on a WSE-3.
"""


def explain_section() -> str:
    from compiler.frontend import resolve_model
    from emulator.hw.mesh import load_mesh
    from emulator.views.mapview import build_map

    width, height = (int(v) for v in MESH.split("x"))
    plan = build_map(resolve_model("tiny"), load_mesh("small").with_mesh(width, height)).plan
    rows, cols = plan.tile_shape("qkv", 1, 1)
    args = ["explain", "tiny", "--mesh", MESH, "--pe", "1,1", "--op", "L0.qkv"]
    first = command(args)
    full_args = ["explain", "tiny", "--mesh", MESH, "--pe", "1,1"]
    full = run(full_args)
    timeline = between(full, "timeline")
    return f"""## 5. One PE's program: `emu explain`

Everything about PE `(1,1)`: what it stores (each buffer's address, bytes, and which slice
of which HuggingFace tensor it holds), its router entry per color and the flow it belongs
to, its parameters, its program, and its timeline in one decode step (from the reference
interpreter). `--op L0.qkv` keeps only the q/k/v GEMV of layer 0 in the program and
timeline: the PE receives its slice of the normalised x from the top row (color MC),
multiplies its {rows} x {cols} tile (`vmul` for the first column, then one `vgemv` for
the rest), and sends the partial sums west along its row (color ROW0) to the left column:

{first}
The program lines are exactly the instructions the engines execute (the Program's region
code, `isa.disasm.format_instruction`); the comments after `;` name the buffers the
addresses point into and the parameter values of this PE. Without `--op`, the whole step
of PE `(1,1)`: where its time goes, op by op (`wait` is time spent waiting for a message):

```text
$ emu {' '.join(full_args)}
[... stores, routes, parameters and the program, as above ...]
{timeline.rstrip()}
```

"""


def step_section() -> str:
    from compiler import reference
    from compiler.frontend import resolve_model
    from compiler.weights import random_weights

    first = command(["step", "tiny", "--mesh", MESH, "--seed", "0", "--op", "L0.rmsnorm",
                     "--steps", "12"])
    until = command(["step", "tiny", "--mesh", MESH, "--pe", "0,1", "--until", "60"])
    values = command(["step", "tiny", "--mesh", MESH, "--seed", "0", "--pe", "1,1",
                      "--op", "L0.qkv", "--steps", "4"])
    logits_args = ["step", "tiny", "--mesh", MESH, "--seed", "0", "--pe", "0,0", "--op",
                   "lm_head"]
    logits_out = run(logits_args)
    lines = logits_out.rstrip().splitlines()
    logits = shell(logits_args, "\n".join(lines[:1] + ["[...]"] + lines[-10:]))
    spec = resolve_model("tiny")
    ref = reference.decode_step(spec, random_weights(spec, 0), 1,
                                reference.KVCache.empty(spec))
    shown = ", ".join(f"{float(v):.7g}" for v in ref[:6])
    return f"""## 6. Event by event: `emu step`

`emu step CONFIG` compiles the model and replays one decode step on the reference
interpreter, one event (one executed instruction) per line, in time order: cycles, PE, pc,
the op block, the instruction, and where its message goes or comes from. On a terminal it
is interactive (Enter: next event, `c N`: continue to cycle N, `q`: quit); `--steps N` and
`--until CYCLE` are for scripts. With `--seed N` the step is functional (random weights
of that seed) and every event also shows the values it wrote or sent. The first RMSNorm of
layer 0: each top-row PE squares and sums its chunk of h (`rdot`), then a tree reduction
along the row adds the partial sums into `(0,0)` (`send` / `recvadd` on color ROW0, then
ROW1, ...). A `recv` starts when it is posted and ends when its message has arrived:

{first}
Filtered to one PE (without `--seed`: timing only) up to a cycle, with the messages in
flight to or from it:

{until}
PE `(1,1)` receiving its chunk of x and starting its q/k/v tile:

{values}
At the end of the step the left column holds the logits in C layout: `(0,0)` holds the first
chunk after the last `recvadd` of the LM head's row reduction:

{logits}
The numpy reference (`compiler.reference.decode_step`, same weights and token 1) gives the
same first logits: `[{shown}, ...]`.

"""


def run_section() -> str:
    return f"""## 7. The final report: `emu run`

`emu run` does the whole disaggregated pipeline: prefill of the prompt on the systolic
chip, the KV cache over the link, its layout on the wafer, then decode steps on the mesh
(with its own defaults for the dtype and the prompt, see `emu run --help`, so its cycles per
step differ from the fp32 step above):

{command(["run", "--mesh", MESH])}
Where to go next: docs/mapping.md (the mapping and its cycle formulas), docs/isa.md (the
instructions), docs/timing.md (the timing model), and `emu map` / `emu explain` on your own
`config.json` (`--hw wse3` for a whole wafer).
"""


def build() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        parts = [intro(), model_section(), graph_section(workdir), tiles_section(workdir),
                 map_section(), explain_section(), step_section(), run_section()]
    return "".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "tutorial.md"))
    out = Path(parser.parse_args().out)
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, build())
    for path in (out, ROOT / TINY_PNG, ROOT / WAFER_PNG):
        path.chmod(0o644)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
