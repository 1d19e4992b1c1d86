"""Pure recognisers for the few Postfix log lines pfm-policyd acts on.

Postfix asks the policy service at END-OF-MESSAGE *before* cleanup(8) reports its verdict,
so a message that header_checks, body_checks or a milter rejects at the end of DATA has
already been committed. pfm-policyd follows the mail log and takes those charges back.
"""

from __future__ import annotations

import re

# "postfix/cleanup[123]: 4Bd2x...: reject: header Subject: ...", also "milter-reject:",
# any syslog_name ("postfix-out/cleanup", "postfix/submission/cleanup").
_CLEANUP_REJECT = re.compile(
    r"\bpostfix[\w.-]*/(?:[\w.-]+/)*cleanup\[\d+\]: ((?=[0-9A-Za-z]*[0-9A-Z])[0-9A-Za-z]{5,20}): (?:milter-)?reject: "
)


def cleanup_rejected_queue_id(line: str) -> str | None:
    """The queue id of a message cleanup(8) rejected, or None for any other line."""
    if "reject: " not in line or "cleanup[" not in line:
        return None
    m = _CLEANUP_REJECT.search(line)
    return m.group(1) if m else None
