"""Tables that never truncate a number: right-justified (numeric) columns are as wide as
their widest cell and never wrap; text columns fold onto more lines instead of ending in
an ellipsis. Output that is not a terminal gets a wide layout (`output_console`), and runs
of identical consecutive rows (80 equal layers) collapse into one row with a count.
"""

import os
import sys

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

PIPED_WIDTH = 160     # columns of a console whose output is a file or a pipe
TEXT_MIN_WIDTH = 10   # a text column folds, but keeps at least this many columns


def fit(table: Table) -> Table:
    """Make `table`'s numeric (right-justified) columns wide enough for every cell and its
    header, unwrappable, and its text columns fold rather than truncate."""
    for column in table.columns:
        if column.justify == "right":
            cells = [str(cell) for cell in column._cells] + [str(column.header)]
            column.no_wrap = True
            column.min_width = max(len(text) for text in cells)
        else:
            cells = [str(cell) for cell in column._cells] + [str(column.header)]
            column.overflow = "fold"
            column.min_width = min(TEXT_MIN_WIDTH, max(len(text) for text in cells))
    return table


def output_console(stderr: bool = False) -> Console:
    """A rich console: the terminal's width (or $COLUMNS), else PIPED_WIDTH columns when the
    output is a file or a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH
    return Console(stderr=stderr, width=width)


def print_tables(console: Console, *tables) -> None:
    """Print every table (None skipped) after `fit`; a table whose numbers need more columns
    than the console has is printed at its minimum width, uncropped (the terminal wraps the
    lines; no number loses a digit)."""
    for table in tables:
        if table is None:
            continue
        fit(table)
        wide = console.options.update_width(1 << 16)
        need = Measurement.get(console, wide, table).minimum
        if need > console.width:
            console.print(table, width=need, crop=False)
        else:
            console.print(table)


def collapse_runs(labels: list[str], rows: list[tuple]) -> list[tuple[str, tuple]]:
    """(label, row) per run of equal consecutive rows: a run of n > 1 rows is labelled
    'first-last (x n)'."""
    out = []
    start = 0
    for k in range(1, len(rows) + 1):
        if k == len(rows) or rows[k] != rows[start]:
            n = k - start
            label = labels[start] if n == 1 else f"{labels[start]}-{labels[k - 1]} (x{n})"
            out.append((label, rows[start]))
            start = k
    return out
