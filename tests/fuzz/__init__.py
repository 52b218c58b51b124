"""Fuzz targets of every file reader (see targets.py and fuzz.py)."""
