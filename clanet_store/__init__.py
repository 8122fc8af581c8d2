"""clanet-store: a feature store for cross-batch cell line authentication (CLANet)."""

__version__ = "0.1.0"
