"""Worker processes that render utterance jobs in order, computing alike whatever their number."""
import multiprocessing
import os
from typing import Iterable, Sequence

from icefall_cif.synth.render import UttJob, render_job


def default_num_jobs() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# One BLAS thread per worker: the workers already fill the cores, and the resampler's matrix
# product runs several times slower when BLAS threads compete for busy cores.
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Executor:
    """Renders jobs in order in `num_jobs` worker processes.

    Even one job gets a worker process rather than running inline: the calling process may
    have BLAS threads set up for other work, and the workers must all compute alike for the
    corpus not to depend on `num_jobs`.
    """

    def __init__(self, num_jobs: int):
        self.num_jobs = num_jobs
        # spawn, not fork: the parent may hold threads (torch, tqdm's monitor) that fork would
        # copy in an arbitrary state, and fresh interpreters read _WORKER_ENV when they import
        # numpy.
        saved = {k: os.environ.get(k) for k in _WORKER_ENV}
        os.environ.update(_WORKER_ENV)
        try:
            self.pool = multiprocessing.get_context("spawn").Pool(num_jobs)
        finally:
            for k, v in saved.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v

    def map(self, jobs: Sequence[UttJob]) -> Iterable[float]:
        """The seconds of audio each job wrote, in the order of `jobs`, as they are done."""
        return self.pool.imap(render_job, jobs, chunksize=2)

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.pool.close()
        else:
            # Ctrl-C or an espeak-ng failure: do not wait for the queued utterances.
            self.pool.terminate()
        self.pool.join()
