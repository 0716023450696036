"""Thin commands: parse, call the library, print."""
