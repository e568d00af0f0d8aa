"""vh: value heads on a frozen 2048 trunk, trained on a cached embedding store."""

__version__ = "0.1.0"
