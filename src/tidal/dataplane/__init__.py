"""tidal.dataplane"""
