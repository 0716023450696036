"""tidal.innet"""
