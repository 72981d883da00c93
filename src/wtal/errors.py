"""The one exception type users see.

Every problem caused by input (a file, a field, a value) is raised as a
``WtalError`` whose message names the file or video, the field and what was
expected. The CLI prints the message and exits with status 2 instead of
showing a traceback.
"""


class WtalError(Exception):
    """A problem with user input: a file, a field or a value."""


def where(path, field=None) -> str:
    """Format a location as ``path`` or ``path: field`` for error messages."""
    return f"{path}: {field}" if field else str(path)
