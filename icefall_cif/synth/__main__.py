"""`python -m icefall_cif.synth`: see :mod:`icefall_cif.synth.cli`."""
from icefall_cif.synth.cli import main

main()
