"""``python -m convsight.cli``: the ``convsight`` command."""

from convsight.cli import main

main()
