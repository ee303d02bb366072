"""fracgen: formula-driven synthetic datasets (1p-frac and friends)."""

__version__ = "0.1.0"
