"""User-facing errors.

A :class:`FeatgsError` is a problem with the user's input (a file, an argument), not a bug.
The CLI prints its message on one line and exits with code 2; everything else lets it
propagate so that library users can catch it.
"""


class FeatgsError(Exception):
    """Bad input: the message names the file or argument and what was expected."""
