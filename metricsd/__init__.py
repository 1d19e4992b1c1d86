"""pfm-metricsd: a Prometheus exporter for Postfix and Dovecot logs and the mail queue."""
