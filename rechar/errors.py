"""Errors a user can cause (bad model name, config, path). The CLI prints them as one line, exit 2."""


class UserError(Exception):
    """A problem with the user's input; the message names it in one line."""
