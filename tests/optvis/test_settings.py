"""Render settings: every knob has its help text in one place, which the command line reads."""

from __future__ import annotations

import dataclasses

from typer.testing import CliRunner

from convsight.cli import app
from convsight.optvis.settings import RenderSettings, setting_help


def test_every_setting_has_help():
    for field in dataclasses.fields(RenderSettings):
        text = setting_help(field.name)
        assert len(text.split()) >= 2 and text.endswith("."), field.name


def test_the_command_line_reads_the_settings_help():
    result = CliRunner().invoke(app, ["maximize", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    for name in ("steps", "lr", "optimizer", "views", "l1", "tv", "precision"):
        assert " ".join(setting_help(name).split()) in flat, name
