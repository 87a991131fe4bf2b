"""Exceptions shared by every command: a `UserError` is printed as one clear line, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a file, a flag, a config key): the message names it and the fix."""
