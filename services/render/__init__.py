"""Config rendering: Postfix maps + ``main.cf`` lines and Dovecot auth snippets (pure), and
their atomic installation with a diff (:mod:`.files`).

Renderers are pure functions of the configuration returning ``{filename: RenderedFile}``;
nothing here touches the directory itself: Postfix and Dovecot query it natively.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RenderedFile:
    """One file to install: its text, permission bits and (optional) owning group.

    ``secret`` marks files holding a password (an LDAP bind password): created with ``mode``
    from the start, and their diff is never printed.
    """

    text: str
    mode: int = 0o644
    group: str = ""
    secret: bool = False


Rendered = dict[str, RenderedFile]
