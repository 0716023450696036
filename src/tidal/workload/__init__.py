"""tidal.workload"""
