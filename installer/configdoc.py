"""Write docs/configuration.md from the settings objects: ``python -m installer.configdoc > docs/configuration.md``."""

from __future__ import annotations

import json
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from console.settings import FIELD_DOCS as CONSOLE_DOCS
from console.settings import ConsoleSettings
from server.core.settings import Settings
from server.core.settings_docs import FIELD_DOCS

HEADER = """# Configuration

Every process (API, worker, controller, CLI, console) reads these environment variables once at start into one frozen \
settings object (`server/core/settings.py`; the console's own in `console/settings.py`). A bad value stops the process \
with the variable's name, e.g. `invalid configuration: MODELDECK_API_PORT: Input should be a valid integer`. Lists and \
maps are JSON.

This file is generated: `python -m installer.configdoc > docs/configuration.md` (a test fails when it is out of date).

| Variable | Default | Meaning |
|---|---|---|
"""


def _default(field: FieldInfo) -> str:
    value: Any = field.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is PydanticUndefined or value in ("", None):
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, (list, tuple, dict)):
        return f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"
    return f"`{value}`"


def _rows(fields: dict[str, FieldInfo], prefix: str, docs: dict[str, str]) -> list[str]:
    rows = []
    for name, field in fields.items():
        var = field.validation_alias if isinstance(field.validation_alias, str) else f"{prefix}{name.upper()}"
        if name not in docs:
            raise KeyError(f"setting {name!r} has no description in FIELD_DOCS")
        rows.append(f"| `{var}` | {_default(field)} | {docs[name]} |")
    return rows


def render() -> str:
    """Return the whole configuration page."""
    rows = _rows(Settings.model_fields, "MODELDECK_", FIELD_DOCS)
    rows += _rows(ConsoleSettings.model_fields, "MODELDECK_CONSOLE_", CONSOLE_DOCS)
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
