"""MQTT: publishing from the outbox, retained statuses, and (later) commands and reference data."""
