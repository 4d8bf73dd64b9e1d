"""Metrics that basicsr lacks."""
