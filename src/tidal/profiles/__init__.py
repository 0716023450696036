"""Package data: committed profile files (reference.json, measured with `tidal profile`)."""
