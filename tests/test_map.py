"""`emu map`: roles per PE, terminal maps (zoom, downsampling, --layer), PNG files, and
one-line exit-2 errors naming the valid range."""

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from compiler.place import pe_usage
from emulator.cli import main
from emulator.hw.mesh import load_mesh
from emulator.views import mapview

MODELS = Path(__file__).resolve().parent.parent / "programs" / "models"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def emu(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tiny_map(width=8, height=8, layout="groups", **kwargs):
    """The old layouts' map (the tests below check their row roles); the spread layout,
    the default, has its own test."""
    mesh = load_mesh("small").with_mesh(width, height)
    return mapview.build_map(resolve_model("tiny"), mesh, model="tiny", layout=layout,
                             **kwargs)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_roles_follow_the_mapping():
    m = tiny_map()
    spec = m.spec
    roles = m.roles
    assert roles[0, 0] == mapview.ROOT
    assert (roles[0, 1:] == mapview.TOP).all() and (roles[1:, 0] == mapview.LEFT).all()
    attention_rows = np.flatnonzero(m.plan.vec("groups").sizes())
    assert len(attention_rows) == min(spec.num_kv_heads, 8)
    assert (roles[attention_rows[attention_rows > 0], 1:] == mapview.ATTN).all()
    others = [j for j in range(1, 8) if j not in attention_rows]
    assert (roles[others, 1:] == mapview.GEMV).all()
    assert np.array_equal(m.used, pe_usage(m.placement) * 4)
    assert m.fits and "fits:" in m.status()


def test_placement_equals_the_compilers_when_it_fits():
    m = tiny_map()
    compiled = compile_decode(m.spec, m.mesh, layout="groups")
    assert m.placement.buffers == compiled.placement.buffers
    assert m.placement.total_words == compiled.placement.total_words


def test_idle_pes_when_the_mesh_is_wider_than_the_model():
    m = tiny_map(100, 6)
    hidden = m.spec.hidden_size
    assert (m.roles[2:, hidden:] == mapview.IDLE).all()
    assert (m.roles[2:, 1:hidden] == mapview.GEMV).all()


def test_terminal_map_small_mesh():
    result = emu("map", "tiny", "--layout", "groups", "--mesh", "8x8")
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].startswith("tiny on small 8x8")
    assert "    0 R T T T T T T T" in out and "    1 L A A A A A A A" in out
    assert "    2 L G G G G G G G" in out
    assert "attention: kv group 0" in out and "attention: kv group 1" in out
    for name in ("root (0,0)", "top row", "left column", "attention row", "GEMV tiles"):
        assert name in out
    assert "hidden per column x (R)" in out and "8 (0-7)" in out


def test_terminal_map_downsamples_large_meshes():
    result = emu("map", "tiny", "--mesh", "200x100")
    assert result.exit_code == 0, result.output
    assert "each character = 4x8 PEs" in result.stdout
    grid = [line for line in result.stdout.splitlines() if line[:6].strip().endswith("-")]
    assert len(grid) == 100 // 8 + 1
    assert all(len(line) >= 6 + 50 for line in grid)


def test_majority_blocks_picks_the_most_frequent_role():
    grid = np.array([[1, 4, 4, 5], [4, 4, 5, 5]])
    assert mapview.majority_blocks(grid, 2, 2).tolist() == [[4, 5]]
    assert mapview.priority_blocks(grid.astype(np.int8), 2).tolist() == [[1, 4]]


def test_layer_view_zoomed_region():
    m = tiny_map()
    result = emu("map", "tiny", "--layout", "groups", "--mesh", "8x8", "--layer", "1",
                 "--region", "1,0,2,2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "region x 1-2, y 0-2, layer 1" in out
    for name in ("L1.qkv", "L1.o", "L1.gu", "L1.down", "L1.k0", "L1.v0"):
        assert f"{name} " in out
        assert f" {m.placement.addr(name)} " in out
    per_pe = [line for line in out.splitlines() if re.match(r"│ \d+ │ \d+ │", line)]
    assert len(per_pe) == 6
    qkv = "x".join(map(str, m.plan.tile_shape("qkv", 1, 1)))
    assert qkv in per_pe[2]
    assert "L0.qkv" not in out


def test_layer_bytes_add_up_to_the_layer_share():
    m = tiny_map()
    total = sum(mapview.layer_bytes(m, layer) for layer in range(m.spec.num_layers))
    lm_head = mapview.tile_elements(m.plan, "lm_head") * 4
    scratch = sum(b.words for b in m.placement.buffers.values() if b.kind == "scratch") * 4
    final_norm = np.zeros_like(total)
    final_norm[0, :] = m.plan.vec("hidden").sizes() * 4
    assert np.array_equal(total + lm_head + scratch + final_norm, m.used)


def test_png_tiny_mesh(tmp_path):
    path = tmp_path / "maps" / "tiny.png"
    result = emu("map", "tiny", "--layout", "groups", "--mesh", "8x8", "--png", path)
    assert result.exit_code == 0, result.output
    width, height = png_size(path)
    assert width >= 800 and height >= 600
    assert not list(path.parent.glob(".*.tmp"))


def test_png_full_wafer_llama_8b(tmp_path):
    path = tmp_path / "llama.png"
    result = emu("map", MODELS / "llama-3.1-8b.json", "--hw", "wse3", "--dtype", "bf16",
                 "--png", path)
    assert result.exit_code == 0, result.output
    m = mapview.build_map(resolve_model(MODELS / "llama-3.1-8b.json"), load_mesh("wse3"),
                          "bf16")
    assert (m.plan.pw, m.plan.ph) == (755, 1170)
    assert m.fits and m.used.max() <= m.mesh.sram_bytes
    assert "DOES NOT FIT" not in result.stdout and "does not fit" not in result.stderr
    width, height = png_size(path)
    assert width >= 1000 and height >= 900


def test_png_layer_view(tmp_path):
    path = tmp_path / "layer.png"
    result = emu("map", "tiny", "--mesh", "64x64", "--layer", "0", "--png", path)
    assert result.exit_code == 0, result.output
    assert png_size(path)[0] >= 800


@pytest.mark.parametrize("args, fragment", [
    (["--layer", "2"], "--layer 2 is outside the model's layers 0..1"),
    (["--layer", "-1"], "--layer -1 is outside the model's layers 0..1"),
    (["--region", "0,0,8,3"], "need 0 <= x0 <= x1 <= 7 and 0 <= y0 <= y1 <= 7"),
    (["--region", "3,3,1,1"], "is outside the 8x8 mesh"),
    (["--region", "1,2,3"], "expected x0,y0,x1,y1"),
    (["--mesh", "8by8"], "expected WxH"),
])
def test_bad_options_exit_2(tmp_path, args, fragment):
    path = tmp_path / "map.png"
    result = emu("map", "tiny", "--mesh", "8x8", *args, "--png", path) if "--mesh" not in \
        args else emu("map", "tiny", *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not path.exists()


def test_spread_layout_map_shows_the_bands():
    m = tiny_map(layout="auto")
    assert m.plan.layout == "spread" and m.fits
    bands = m.plan.bands
    assert (m.roles[1:bands.rows, 1:] == mapview.ATTN).all()
    assert np.array_equal(m.used, pe_usage(m.placement) * 4)
    result = emu("map", "tiny", "--mesh", "8x8", "--layer", "0", "--region", "1,0,2,3")
    assert result.exit_code == 0, result.output
    assert "spread" in result.stdout and "L0.k " in result.stdout and "L0.v " in result.stdout


def consistent(m):
    """Title, SRAM bar, legend, cells and row notes read one array: check they agree."""
    total = m.reserved_total
    kinds = m.bytes_by_kind()
    assert int(total.max()) == m.placement.total_bytes == sum(kinds.values())
    assert f"{m.placement.total_bytes:,} of {m.mesh.sram_bytes:,}" in m.status()
    assert all(f"{k} {v:,}" in m.status() for k, v in kinds.items())
    legend = mapview.legend_rows(m, m.roles, total)
    top = max(int(text.split("-")[-1].replace(",", "")) for _, _, text in legend)
    assert top == m.placement.total_bytes
    assert sum(count for _, count, _ in legend) == m.plan.pw * m.plan.ph
    plan = m.plan
    for key, words in m.placement.class_words.items():
        split = mapview.class_kind_words(m.placement.maps[key], words)
        assert sum(split.values()) == words
    kv_rows = [j for j in range(plan.ph) if m.reserved["kv"][j].any()]
    if kv_rows:
        note = mapview.attention_note(m, kv_rows[0], kv_rows[-1])
        assert f"KV up to {int(m.reserved['kv'].max()):,} B/PE" in note


@pytest.mark.parametrize("layout", ["groups", "even", "auto"])
@pytest.mark.parametrize("size", [(8, 8), (12, 7), (5, 16)])
def test_title_bar_legend_and_notes_share_one_source(layout, size):
    consistent(tiny_map(*size, layout=layout))


def test_llama_8b_wafer_map_agrees_with_itself():
    spec = resolve_model("llama-3.1-8b")
    m = mapview.build_map(spec, load_mesh("wse3"), dtype="bf16", model="llama-3.1-8b")
    consistent(m)
    kv = m.bytes_by_kind()["kv"]
    band_rows = m.plan.bands.rows
    assert int(m.reserved["kv"][:band_rows, 1:].max()) == kv
    assert not m.reserved["kv"][band_rows:].any()
