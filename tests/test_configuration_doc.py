"""docs/configuration.md is generated from the settings objects and kept up to date."""

from __future__ import annotations

from conftest import ROOT
from console.settings import FIELD_DOCS as CONSOLE_DOCS
from console.settings import ConsoleSettings
from installer.configdoc import render
from server.core.settings import Settings
from server.core.settings_docs import FIELD_DOCS


def test_every_setting_has_a_description() -> None:
    assert set(Settings.model_fields) - set(FIELD_DOCS) == set()
    assert set(ConsoleSettings.model_fields) - set(CONSOLE_DOCS) == set()
    assert set(FIELD_DOCS) - set(Settings.model_fields) == set(), "descriptions of settings that no longer exist"


def test_the_configuration_page_is_what_the_generator_writes() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == render(), "docs/configuration.md is stale: run `python -m installer.configdoc > docs/configuration.md`"
    assert "| `MODELDECK_API_PORT` | `8600` |" in page
