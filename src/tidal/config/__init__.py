"""tidal.config"""
