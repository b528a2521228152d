"""The README's configuration table is the reference operators read: it lists every setting of
``poller.config.Settings`` (``POLLER_`` + the field name upper-cased) with its type and its real
default, and nothing that is not a setting."""

from __future__ import annotations

import os
import re
import types
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import pytest
from pydantic import AnyHttpUrl, SecretStr
from pydantic.fields import FieldInfo

from poller.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
COLUMNS = ["variable", "type", "default", "meaning"]
UNSET = "unset"


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row; a ``|`` inside backticks stays in its cell."""
    cells, current, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    cells.append(current.strip())
    return cells


def _table() -> tuple[list[str], list[list[str]]]:
    text = README.read_text()
    assert "\n## Configuration\n" in text, "README.md has no '## Configuration' section"
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) > 2, "the Configuration section has no table"
    return _cells(lines[0]), [_cells(line) for line in lines[2:]]


def _rows() -> dict[str, dict[str, str]]:
    """Each documented variable's row, by variable name."""
    header, body = _table()
    rows: dict[str, dict[str, str]] = {}
    for cells in body:
        row = dict(zip(header, cells, strict=True))
        names = re.findall(r"`(POLLER_[A-Z0-9_]+)`", row["variable"])
        assert len(names) == 1, f"one variable per row, not {row['variable']!r}"
        assert names[0] not in rows, f"{names[0]} is listed twice"
        rows[names[0]] = row
    return rows


def _env_name(field: str) -> str:
    return f"POLLER_{field.upper()}"


def _shown_default(value: object) -> str:
    """How the table writes a default: as set in the environment, or ``unset``."""
    if value is None or value == [] or value == {}:
        return UNSET
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(item).rstrip("/") for item in value)
    return str(value)


def _type_words(name: str, annotation: object) -> list[str]:
    """Words the type cell must hold for a field of this annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _type_words(name, inner)
    if origin is Annotated:
        return _type_words(name, args[0])
    if origin is Literal:
        return ["one of", *(f"`{value}`" for value in args)]
    if origin is dict:
        return ["json object", *(["secret"] if args[1] is SecretStr else [])]
    if origin is list:
        return ["list"]
    if origin is tuple and args[0] is AnyHttpUrl:
        return ["url list"]
    simple = {bool: "boolean", int: "integer", SecretStr: "secret", str: "string"}
    if annotation in simple:
        return [simple[annotation]]
    if annotation is float:
        return ["seconds" if name.endswith(("_s", "_seconds")) else "number"]
    raise AssertionError(f"{name}: no documented type for {annotation!r}; teach this test one")


FIELDS: dict[str, FieldInfo] = dict(Settings.model_fields)


def test_the_table_has_a_type_column() -> None:
    header, _ = _table()
    assert header == COLUMNS


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = set(_rows())
    settings = {_env_name(name) for name in FIELDS}
    assert not settings - documented, f"settings missing from the README: {settings - documented}"
    assert not documented - settings, f"README rows that are no setting: {documented - settings}"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_default_matches(name: str) -> None:
    row = _rows().get(_env_name(name))
    if row is None:
        pytest.fail(f"{_env_name(name)} is not in the README's configuration table")
    shown = row["default"].replace("`", "").strip()
    actual = _shown_default(FIELDS[name].get_default(call_default_factory=True))
    assert shown == actual, f"{_env_name(name)}: the README says {shown!r}, Settings {actual!r}"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_type_and_meaning_are_given(name: str) -> None:
    row = _rows().get(_env_name(name))
    if row is None:
        pytest.fail(f"{_env_name(name)} is not in the README's configuration table")
    type_cell = row["type"].lower()
    for word in _type_words(name, FIELDS[name].annotation):
        assert word.lower() in type_cell, f"{_env_name(name)}: type {row['type']!r} lacks {word!r}"
    assert row["meaning"].strip(), f"{_env_name(name)} has no meaning"


def test_defaults_read_as_the_environment_would_give_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's way of writing defaults is the environment's: each default, set as its
    variable the way the table shows it, gives the same setting as leaving it unset."""
    for key in [key for key in os.environ if key.startswith("POLLER_")]:
        monkeypatch.delenv(key)
    defaults = Settings()
    for name, field in FIELDS.items():
        shown = _shown_default(field.get_default(call_default_factory=True))
        if shown != UNSET:
            monkeypatch.setenv(_env_name(name), shown)
    explicit = Settings()
    for name in FIELDS:
        assert getattr(explicit, name) == getattr(defaults, name), name
