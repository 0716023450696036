"""tidal.profiling"""
