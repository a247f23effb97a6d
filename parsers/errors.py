"""The one exception type that crosses package boundaries.

Every reader, the replay, the Python API and the CLI agree on it: whatever goes wrong with an
input, the user gets one line saying what is wrong and, where there is one, what to do about it.

What to do depends on who called: a notebook user passes ``kernel="6.12"``, a shell user types
``--kernel 6.12``. So the library never spells a command-line flag. It writes the remedy as a
``hint`` that names the caller's parameters as ``{name}`` placeholders (the keyword of
:func:`kvmtrace.open` / ``Trace.analyze``); ``str(err)`` shows them as those keywords, and the CLI
shows them as its flags (see ``kvmtrace.commands.common.cli_message``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class TraceError(Exception):
    """An input that cannot be read as asked.

    ``message`` says what is wrong (it may quote file names and trace text, so it is never
    formatted); ``hint`` says what to do, naming parameters as ``{name}``.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The whole message, with each ``{name}`` in the hint spelt by ``spell(name)``."""
        if not self.hint:
            return self.message
        return f"{self.message}; {_PLACEHOLDER.sub(lambda m: spell(m[1]), self.hint)}"

    def __str__(self) -> str:
        return self.render()


class TraceWarning(UserWarning):
    """Something was recovered from a damaged input (a cut-short file, skipped text lines)."""
