"""tidal.control"""
