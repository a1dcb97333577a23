"""The ``convsight`` command line: parse, call the library, write outputs.

:mod:`.app` holds the command groups, :mod:`.options` the options commands share (declared
once; the lists in their help come from the registries), :mod:`.errors` how a command fails;
each other module registers the commands of one kind of work.
"""

from __future__ import annotations

from convsight.cli import analysis, attribute, models, paper, training, visualize  # noqa: F401 - register
from convsight.cli.app import app, loaded_model
from convsight.cli.errors import command, say, usage_sentence
from convsight.cli.options import card_fields, split_list


def main() -> None:
    """Entry point of the ``convsight`` command."""
    app(prog_name="convsight")


__all__ = [
    "app",
    "card_fields",
    "command",
    "main",
    "loaded_model",
    "say",
    "split_list",
    "usage_sentence",
]

if __name__ == "__main__":  # pragma: no cover
    main()
