"""The one exception type the entry point turns into a one-line error."""


class BenchError(ValueError):
    """Bad input: the message names the problem and the fix.

    `python -m bench` prints it on one line and exits with status 2.
    """
