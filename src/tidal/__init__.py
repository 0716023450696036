"""Tidal: SLO-aware, cost-minimizing ML inference serving."""

__version__ = "0.1.0"
