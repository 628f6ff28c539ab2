"""The one exception type the course raises for bad input.

Every message is a single line that says what was wrong and what to do about it,
so the command line can print it as is and a notebook shows it without a deep traceback.
"""


class SLMError(Exception):
    """Bad input to the course's helpers: a missing file, an unknown character, a bad option."""
