"""What operators look at: Prometheus metrics, access logs and request ids."""
