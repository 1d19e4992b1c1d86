"""Pure parsers for Postfix, Dovecot and syslog log lines."""
