"""tidal.forecast"""
