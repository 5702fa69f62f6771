"""One source per fact: config/match_node.yaml and README.md's parameter table against params.py.

params.py declares every parameter with its default; the shipped YAML and the README table
restate those defaults for readers, so each is checked against the table, parameter by
parameter, with the parameter named in the failure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from match_node import params as P

PACKAGE = Path(__file__).resolve().parents[1]
CONFIG = PACKAGE / "config" / "match_node.yaml"
README = PACKAGE.parent / "README.md"
TABLE_HEADER = "| parameter | default |"

# Parameters whose value in config/match_node.yaml intentionally differs from params.py's
# default, each with the reason. Empty: the shipped config is the defaults.
YAML_DIFFERS: dict[str, str] = {}


def readme_defaults(text: str) -> dict[str, str]:
    """{parameter name: default cell} of README's parameter table (the rows after the header
    `| parameter | default | ...`, up to the first line that is not a table row)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER))
    rows: dict[str, str] = {}
    for line in lines[start + 2:]:  # skip the header and its |---| line
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = cells[0].strip("`")
        assert name not in rows, f"README parameter table lists '{name}' twice"
        rows[name] = cells[1]
    return rows


def parse_cell(cell: str, spec: P.ParamSpec) -> Any:
    """A README default cell as a value of the parameter's type ('""' is the empty string)."""
    if spec.type is bool:
        assert cell in ("true", "false"), f"'{spec.name}': bool default written as {cell!r}"
        return cell == "true"
    if spec.type is str:
        return "" if cell == '""' else cell
    return spec.type(cell)


def test_readme_table_parser_reads_the_cells():
    text = ("intro\n| parameter | default | range | run-time | description |\n|---|---|---|---|---|\n"
            "| `a` | 0.5 | 0..1 | yes | x |\n| `b` | \"\" | path | no | y |\n\nafter\n| `c` | 1 |\n")
    assert readme_defaults(text) == {"a": "0.5", "b": '""'}
    assert parse_cell('""', P.SPECS["extractor_weights"]) == ""
    assert parse_cell("-1", P.SPECS["detection_threshold"]) == -1.0
    assert parse_cell("true", P.SPECS["allow_download"]) is True
    with pytest.raises(ValueError):
        parse_cell("0.5", P.SPECS["max_keypoints"])  # an int parameter written as a float


def test_every_parameter_is_in_the_yaml():
    values = P.load_yaml(CONFIG)
    missing = [name for name in P.SPECS if name not in values]
    assert not missing, f"config/match_node.yaml lacks {missing}"


@pytest.mark.parametrize("name", list(P.SPECS))
def test_yaml_value_is_the_default(name):
    spec = P.SPECS[name]
    values = P.load_yaml(CONFIG)
    if name not in values:
        pytest.fail(f"config/match_node.yaml lacks '{name}'")
    value = values[name]
    if name in YAML_DIFFERS:
        assert value != spec.default, f"'{name}' equals the default now: drop it from YAML_DIFFERS"
        spec.validate(value)
        return
    # The type too: ROS takes a parameter's type from the YAML (1 is not 1.0 there).
    assert type(value) is spec.type and value == spec.default, (
        f"config/match_node.yaml: {name}: {value!r}, params.py's default is {spec.default!r}")


def test_yaml_allow_list_names_declared_parameters():
    assert set(YAML_DIFFERS) <= set(P.SPECS)


def test_every_parameter_is_in_the_readme_table():
    rows = readme_defaults(README.read_text())
    missing = [name for name in P.SPECS if name not in rows]
    stale = [name for name in rows if name not in P.SPECS]
    assert not missing, f"README parameter table lacks {missing}"
    assert not stale, f"README parameter table lists undeclared parameters {stale}"


@pytest.mark.parametrize("name", list(P.SPECS))
def test_readme_default_is_the_default(name):
    spec = P.SPECS[name]
    rows = readme_defaults(README.read_text())
    if name not in rows:
        pytest.fail(f"README parameter table lacks '{name}'")
    assert parse_cell(rows[name], spec) == spec.default, (
        f"README: {name}: default {rows[name]}, params.py's is {spec.default!r}")
