"""Evaluating a plan: fidelity, advice, search and step time, on top of the estimate."""
