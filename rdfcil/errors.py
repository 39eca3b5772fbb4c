"""The one exception the lab raises for anything a user can fix.

Its message is a single line saying what is wrong and what to do. The command line prints it
as ``error: <message>`` and exits with status 2; a notebook or papermill run shows the same
line as the exception's text.
"""


class RdfcilError(Exception):
    """A user-facing error: bad configuration, missing data, a corrupt file, a numerical fault."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
