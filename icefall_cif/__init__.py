"""icefall_cif: the shared library behind the CIF speech recognition recipes in egs/."""

__version__ = "0.1.0"
