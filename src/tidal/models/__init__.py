"""tidal.models"""
