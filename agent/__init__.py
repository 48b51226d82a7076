"""Till Agent: the store-side edge agent for POS tills."""

__version__ = "0.1.0"
