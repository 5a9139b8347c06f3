"""Errors a user can cause (bad model name, config, path). The CLI prints them as one line, exit 2."""


class UserError(Exception):
    """A problem with the user's input; the message names it in one line."""


def one_line(e: BaseException) -> str:
    """An exception as the one line a record or a log's last line quotes."""
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0] if text else type(e).__name__
