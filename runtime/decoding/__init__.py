"""Decoding loops: greedy/sampling (`sample.py`) and beam search (`beam.py`), both over the state protocol."""
