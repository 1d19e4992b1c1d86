"""Classify Postfix reject and deferral texts into a small, fixed set of reason classes (pure).

Every function returns one of the constants listed in ``REJECT_REASONS`` or
``DEFERRAL_REASONS``, so a Prometheus label built from them is bounded whatever the
remote servers or the restriction texts say.
"""

from __future__ import annotations

__all__ = [
    "DEFERRAL_REASONS",
    "REJECT_REASONS",
    "classify_cleanup_reject",
    "classify_deferral",
    "classify_reject",
]

REJECT_REASONS: frozenset[str] = frozenset(
    {
        "unknown_user",
        "relay_denied",
        "sender_restriction",
        "client_restriction",
        "helo_restriction",
        "recipient_restriction",
        "dnsbl",
        "policy_service",
        "greylisted",
        "spf_dmarc",
        "size",
        "header_checks",
        "body_checks",
        "milter",
        "tls_required",
        "other",
    }
)

# Delivery problems (deferred, bounced, expired). ``remote_<class>`` is a reply from the
# remote server, named after the RFC 3463 subject of its enhanced status code.
_DSN_SUBJECT = {
    "1": "remote_address",
    "2": "remote_mailbox",
    "3": "remote_system",
    "4": "remote_routing",
    "5": "remote_protocol",
    "6": "remote_content",
    "7": "remote_policy",
}

DEFERRAL_REASONS: frozenset[str] = frozenset(
    {
        "connection_refused",
        "connection_timed_out",
        "connection_lost",
        "network_unreachable",
        "dns_failure",
        "tls_failure",
        "greylisted",
        "mailbox_full",
        "unknown_user",
        "transport_unavailable",
        "expired",
        *_DSN_SUBJECT.values(),
        "other",
    }
)

_SPF_WORDS = ("spf", "dmarc", "sender policy framework")


def _policy_keywords(low: str) -> str | None:
    """Reason classes recognised from words in the text, whatever the restriction."""
    if "greylist" in low or "graylist" in low:
        return "greylisted"
    if any(w in low for w in _SPF_WORDS):
        return "spf_dmarc"
    if "blocked using " in low or " listed by " in low or "dnsbl" in low:
        return "dnsbl"
    return None


def classify_reject(code: str, text: str) -> str:
    """Reason class of an smtpd reject from its reply code and the text after code/DSN."""
    low = text.lower()
    found = _policy_keywords(low)
    if found is not None:
        return found
    if "user unknown" in low or "unknown user" in low or "no such user" in low:
        return "unknown_user"
    if "relay access denied" in low:
        return "relay_denied"
    if "sender address rejected" in low:
        return "sender_restriction"
    if "client host rejected" in low:
        return "client_restriction"
    if "helo command rejected" in low:
        return "helo_restriction"
    if "message size exceeds" in low or code == "552":
        return "size"
    if "must issue a starttls" in low or "tls is required" in low:
        return "tls_required"
    if "policy" in low or "rate limit" in low or "server configuration problem" in low:
        return "policy_service"
    if "recipient address rejected" in low:
        return "recipient_restriction"
    return "other"


def classify_cleanup_reject(action_text: str) -> str:
    """Reason class of a cleanup(8) reject: ``header …``, ``body …``, ``END-OF-MESSAGE …``."""
    if action_text.startswith("header "):
        return "header_checks"
    if action_text.startswith("body "):
        return "body_checks"
    low = action_text.lower()
    if "message size" in low or "size limit" in low:
        return "size"
    found = _policy_keywords(low)
    if found is not None:
        return found
    return "milter" if action_text.startswith(("END-OF-MESSAGE", "CONNECT", "DATA")) else "other"


def classify_deferral(dsn: str, text: str) -> str:
    """Reason class of a deferred/bounced/expired recipient from its DSN and status text."""
    low = text.lower()
    if "connection refused" in low:
        return "connection_refused"
    if "timed out" in low:
        return "connection_timed_out"
    if "greylist" in low or "graylist" in low:
        return "greylisted"
    if (
        dsn == "4.2.2"
        or dsn == "5.2.2"
        or "mailbox full" in low
        or "quota" in low
        or "insufficient storage" in low
    ):
        return "mailbox_full"
    if "network is unreachable" in low or "no route to host" in low:
        return "network_unreachable"
    if "host or domain name not found" in low or "name service error" in low:
        return "dns_failure"
    if "tls" in low and ("handshake" in low or "cannot start" in low or "required" in low):
        return "tls_failure"
    if "lost connection" in low:
        return "connection_lost"
    if "unknown user" in low or "user unknown" in low or "no such user" in low:
        return "unknown_user"
    if "message expired" in low or low == "expired":
        return "expired"
    if " said: " in low:
        parts = dsn.split(".")
        if len(parts) == 3:
            return _DSN_SUBJECT.get(parts[1], "other")
        return "other"
    if "mail transport unavailable" in low or "delivery temporarily suspended" in low:
        return "transport_unavailable"
    return "other"
