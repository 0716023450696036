"""tidal.apps: whole jobs built on the library.

The demo, its report, `tidal validate` and the papers' reproduction.
"""
