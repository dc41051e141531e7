"""Warehouse edge gateway: validated warehouse transactions from dock-door devices, over MQTT."""

__version__ = "0.1.0"

__all__ = ["__version__"]
