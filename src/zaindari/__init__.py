"""Zaindari: stateless, event-driven functions for industrial predictive maintenance."""

__version__ = "0.1.0"
