"""prune-cli: a Hydra experiment runner for neural-network pruning and parameter sharing."""

__version__ = "0.1.0"
