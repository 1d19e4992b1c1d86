"""The directory: domains, mailboxes, aliases, alias domains, admins, app passwords, audit log."""
