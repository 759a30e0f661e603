"""The plan: which channels each group loses, from scores, a cost model and a budget."""
