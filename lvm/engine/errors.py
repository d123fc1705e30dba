"""The exceptions a user may cause or ask for; the CLI turns each into a one-line message.
(No torch here: the CLI imports this before it knows whether it needs torch at all.)"""


class UserError(Exception):
    """Bad input from the user: a missing dataset, a nonsense number, an unreadable file."""


class Interrupted(Exception):
    """Training stopped by a signal (Ctrl-C, SIGTERM) after saving a checkpoint."""
