"""Training, split by job: options.py (the command line), resume.py (checkpoints to start
from), loop.py (the loop itself), preemption.py (stopping cleanly on SIGTERM/SIGUSR1),
records.py (JSON-lines records next to the log)."""
from icefall_cif.training.loop import BadBatchError, compute_loss, launch, main, run
from icefall_cif.training.options import get_parser

__all__ = ["BadBatchError", "compute_loss", "get_parser", "launch", "main", "run"]
