"""Translation cache: the monitor region (region.py) and the CCFs in it (cache.py)."""
