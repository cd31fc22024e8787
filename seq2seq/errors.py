"""The one exception type for user mistakes (bad input, bad config, missing files).

The CLI turns it into a one-line ``error: ...`` on stderr and exit status 2.
Anything else that escapes is a bug and keeps its traceback.
"""


class Seq2SeqError(Exception):
    """A user-facing error whose message is one line and names the file, line or key."""
