"""The one exception type the command line turns into a clear sentence and exit code 2."""


class ConvsightError(ValueError):
    """Bad input from the user or the data: one clear sentence, no traceback."""


class UnknownLayerError(ConvsightError, KeyError):
    """A layer name that is not in ``model.named_modules()``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
