"""The one exception type the command line turns into a clear sentence and exit code 2, and
the warning it shows as one line when a command substitutes something for what was asked."""

import warnings


class ConvsightError(ValueError):
    """Bad input from the user or the data: one clear sentence, no traceback."""


class UnknownLayerError(ConvsightError, KeyError):
    """A layer name that is not in ``model.named_modules()``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SubstitutionWarning(UserWarning):
    """A command used something other than what was asked (an objective, a layer, an
    engine); the message says what and why. The output records it too."""


def substituted(message: str) -> None:
    """Warn that something other than what was asked is used (one line in the CLI)."""
    warnings.warn(message, SubstitutionWarning, stacklevel=3)
