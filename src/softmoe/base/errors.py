"""The one exception type the CLI turns into a one-line message (no traceback unless --debug)."""


class UserError(Exception):
    """Bad input (params, files, checkpoints): the message says what, where and the fix."""
