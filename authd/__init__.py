"""pfm-authd: Dovecot authentication against the directory (wire format, checkpassword shim)."""
