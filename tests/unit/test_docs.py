"""The README says what the code does: its generated parts are current."""

from __future__ import annotations

from docs.update_readme import README, render


def test_readme_settings_table_matches_the_settings_model() -> None:
    text = README.read_text()
    assert render(text) == text, "run `make docs` to refresh README.md"
