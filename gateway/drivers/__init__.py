"""Device drivers: each owns its transport, reconnects through the supervisor and emits events."""
