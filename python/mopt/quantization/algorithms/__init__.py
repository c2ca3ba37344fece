"""Calibration algorithms beyond max; each module registers itself on import."""
