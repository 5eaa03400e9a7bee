"""What data/, models/ and training/ all build on, importing none of them: the typed
spec machinery (spec.py) and atomic file writes (files.py)."""
