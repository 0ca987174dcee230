"""docs/configuration.md lists exactly the variables the settings objects read."""

from __future__ import annotations

import re

from conftest import ROOT
from console.settings import ConsoleSettings
from server.core.settings import Settings


def documented() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    return set(re.findall(r"^\| `((?:MODELDECK|PROMETHEUS)_[A-Z0-9_]+)` \|", text, flags=re.M))


def test_every_setting_is_documented_and_nothing_else() -> None:
    expected = {(f.validation_alias if isinstance(f.validation_alias, str) else f"MODELDECK_{name.upper()}")
                for name, f in Settings.model_fields.items()}
    expected |= {f"MODELDECK_CONSOLE_{name.upper()}" for name in ConsoleSettings.model_fields}
    missing, stale = expected - documented(), documented() - expected
    assert not missing, f"settings without a row in docs/configuration.md: {sorted(missing)}"
    assert not stale, f"rows in docs/configuration.md for variables no settings object reads: {sorted(stale)}"
