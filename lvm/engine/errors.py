"""The one exception type a user may cause; the CLI turns it into a one-line message and exit 2."""


class UserError(Exception):
    """Bad input from the user: a missing dataset, a nonsense number, an unreadable file."""
