"""Experiments over many cycles, their analysis and reproduction pack, and the demo."""
