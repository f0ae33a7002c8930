"""Screens pushed over the inspector's main layout."""
