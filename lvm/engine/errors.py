"""The exceptions a user may cause or ask for; the CLI turns each into a one-line message.
(No torch here: the CLI imports this before it knows whether it needs torch at all.)

The engine speaks no command line: where a message names a setting the user can change, it
names it by a marker, `{name}` for a parameter of the engine's functions (`{out}`,
`{train_limit}`, `{epochs}`, `{batch_size}`, `{lr}`, `{resume}`, ...) or `{config.FIELD}` for a
field of a model's config, and writes the value after it as the command line does
(`{epochs} 3`, `{config.num_codes}=5`). `str(e)` reads each marker as the setting's plain name
(`epochs 3`, `num_codes=5`: how a notebook calling the engine names it); `e.phrased(say)` reads
each as `say(name)` says, which is how `lvm.cli` writes them as the flags the user typed
(`--epochs 3`, `-o num_codes=5`).
"""

from __future__ import annotations

import re
from typing import Callable

MARKER = re.compile(r"\{((?:config\.)?[A-Za-z_][A-Za-z0-9_]*)\}")  # {name} or {config.FIELD}


def setting(name: str) -> str:
    """The marker that names setting `name` in a message: `setting("config.beta")` -> "{config.beta}"."""
    return "{" + name + "}"


def plain(setting: str) -> str:
    """A setting's plain name: `out`, `num_codes` (for `config.num_codes`)."""
    return setting.removeprefix("config.")


class Phrased:
    """A message that may name settings by marker (see the module's docstring); one that words
    its message only when shown overrides `template`, not `__str__`."""

    def template(self) -> str:
        """The message, its settings still markers."""
        return Exception.__str__(self)  # type: ignore[arg-type]

    def phrased(self, say: Callable[[str], str]) -> str:
        """The message with every setting named as `say(setting)` names it."""
        return MARKER.sub(lambda m: say(m.group(1)), self.template())

    def __str__(self) -> str:
        return self.phrased(plain)


class UserError(Phrased, Exception):
    """Bad input from the user: a missing dataset, a nonsense number, an unreadable file."""


class Advice(Phrased, UserWarning):
    """A warning the user may act on (`warnings.warn(Advice(...))`): the run goes on, slower or
    otherwise than asked. `lvm.cli` prints each as one `warning: ` line."""


class Interrupted(Exception):
    """Training stopped by a signal (Ctrl-C, SIGTERM) after saving a checkpoint."""
