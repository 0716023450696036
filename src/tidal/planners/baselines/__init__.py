"""Baseline policies the research planners are compared with (one module each)."""
