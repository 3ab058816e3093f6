"""Tables never truncate a number, fold text instead, collapse equal runs of rows; the
report of a timing-only run counts the decode steps it timed."""

import io

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from emulator.cli import main
from emulator.views.tables import PIPED_WIDTH, collapse_runs, output_console, print_tables


def render(table: Table, width: int) -> str:
    out = io.StringIO()
    print_tables(Console(file=out, width=width, color_system=None), table)
    return out.getvalue()


@given(numbers=st.lists(st.integers(0, 10**15), min_size=1, max_size=6),
       width=st.integers(20, 60))
def test_numbers_are_never_truncated(numbers, width):
    table = Table(title="cycles of a long run")
    table.add_column("what the number means, in a long sentence that must fold")
    table.add_column("cycles", justify="right")
    table.add_column("seconds", justify="right")
    for n in numbers:
        table.add_row("a description " * 3, f"{n:,}", f"{n / 850e6:.6g}")
    text = render(table, width)
    assert "…" not in text
    for n in numbers:
        assert f"{n:,}" in text and f"{n / 850e6:.6g}" in text


def test_collapse_runs():
    labels = [str(k) for k in range(6)]
    rows = [("1",), ("2",), ("2",), ("2",), ("3",), ("3",)]
    assert collapse_runs(labels, rows) == [("0", ("1",)), ("1-3 (x3)", ("2",)),
                                           ("4-5 (x2)", ("3",))]
    assert collapse_runs([], []) == []


def test_piped_console_is_wide():
    assert output_console().width == PIPED_WIDTH     # pytest captures stdout: not a TTY


def test_timing_only_report_counts_timed_steps():
    result = CliRunner().invoke(main, ["run", "--timing-only", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "decode steps timed" in result.output and "generated tokens" not in result.output
    assert "…" not in result.output


def test_kernel_preparation_is_announced_only_when_it_compiles(monkeypatch):
    from emulator.cli import common
    from emulator.mesh import engine

    out = io.StringIO()
    console = Console(file=out, width=100)
    monkeypatch.setattr(engine, "warm_up", lambda: False)
    common.prepare_mesh_kernels(console)
    assert out.getvalue() == ""
    monkeypatch.setattr(engine, "warm_up", lambda: True)
    monkeypatch.setattr(common, "COMPILE_NOTE_SECONDS", -1.0)
    common.prepare_mesh_kernels(console)
    assert "compiled the mesh kernels in" in out.getvalue()
    assert "first run only" in out.getvalue()
