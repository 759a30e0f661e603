"""What the code knows about each weight-bearing op: weight axes, MACs, patches, folding."""
