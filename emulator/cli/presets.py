"""`emu presets [NAME] [--json]`: list the bundled hardware presets, or show one with every
field's value, unit and public source (emulator/hw/catalog.py)."""

import json

import click
from rich.table import Table

from emulator.hw.catalog import all_presets, describe
from emulator.views.tables import output_console, print_tables


def _value_text(value) -> str:
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() and abs(value) < 1e18 else f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@click.command("presets")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def presets(name, as_json):
    """List the bundled hardware presets, or show preset NAME with units and sources.

    Any command's --hw, --prefill-hw or --link takes a preset name or a JSON file with the
    same fields (copy one with `emu presets NAME --json`)."""
    if name is None:
        rows = all_presets()
        if as_json:
            click.echo(json.dumps({"presets": rows}))
            return
        table = Table(title="bundled presets (emu presets NAME: fields and sources)",
                      title_justify="left")
        for column in ("kind", "name", "description"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["kind"], row["name"], row["description"])
        print_tables(output_console(), table)
        return
    info = describe(name)
    if as_json:
        click.echo(json.dumps(info))
        return
    table = Table(title=f"{info['kind']} preset {info['name']}: {info['description']}",
                  title_justify="left")
    for column, justify in (("field", "left"), ("value", "right"), ("unit", "left"),
                            ("source", "left")):
        table.add_column(column, justify=justify)
    for row in info["fields"]:
        table.add_row(row["field"], _value_text(row["value"]), row["unit"], row["source"])
    print_tables(output_console(), table)


COMMANDS = [presets]
