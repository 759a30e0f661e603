"""Applying a plan: surgery on the graph, re-fitting the layers after it, verification."""
