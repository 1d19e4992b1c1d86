"""DNS for mail domains: the records a domain needs (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT),
DKIM key storage and rotation, and checking a zone file against them.

``records`` and ``zonefile`` are pure; ``dkim`` does the file I/O and cryptography;
``check`` compares a parsed zone with the records we would publish.
"""
