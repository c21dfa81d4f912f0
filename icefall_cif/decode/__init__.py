"""Decoding: greedy search for every CIF decoder type and CTC greedy search."""
from icefall_cif.decode.greedy import GreedyResult, ctc_greedy_search, greedy_search

__all__ = ["GreedyResult", "ctc_greedy_search", "greedy_search"]
