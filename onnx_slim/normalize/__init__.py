"""Normalization: put an exported graph in the one form the channel analysis understands."""
