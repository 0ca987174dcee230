"""The transport to the broker: the request router."""
