"""tidal.cep"""
