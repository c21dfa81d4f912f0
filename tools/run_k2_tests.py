#!/usr/bin/env python3
"""Run k2's own RNN-T and mutual-information tests against icefall_cif/rnnt_loss.py.

A development check, not part of the test suite: it needs a copy of k2-fsa/k2. The tests
are copied to a temporary directory next to a stand-in `k2` package that re-exports this
repository's pure-PyTorch module, so `import k2` in them gets ours. CUDA cases run only
where torch sees a GPU (the stand-in's `with_cuda`).

Usage: .venv/bin/python tools/run_k2_tests.py PATH_TO_K2 [pytest args...]
  PATH_TO_K2: a k2 checkout (with k2/python/tests/) or a bare git directory of one.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = ("rnnt_loss_test.py", "mutual_information_test.py")
REPO = Path(__file__).resolve().parent.parent

SHIM = '''"""Stand-in for k2: the pure-PyTorch RNN-T losses of icefall_cif."""
import torch

import icefall_cif.rnnt_loss as _impl
from icefall_cif.rnnt_loss import *  # noqa: F401,F403

# _impl imported this package as "k2"; delegating to it would recurse.
_impl.USE_K2 = False
with_cuda = torch.cuda.is_available()
'''


def read_test(k2_path: Path, name: str) -> str:
    in_tree = k2_path / "k2" / "python" / "tests" / name
    if in_tree.is_file():
        return in_tree.read_text()
    return subprocess.run(
        ["git", "--git-dir", str(k2_path), "show", f"HEAD:k2/python/tests/{name}"],
        check=True, capture_output=True, text=True,
    ).stdout


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    k2_path = Path(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="k2_tests_") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "k2").mkdir()
        (tmp_path / "k2" / "__init__.py").write_text(SHIM)
        (tmp_path / "tests").mkdir()
        for name in TESTS:
            (tmp_path / "tests" / name).write_text(read_test(k2_path, name))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, str(REPO)]), ICEFALL_CIF_PURE_RNNT="1")
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", str(tmp_path / "tests")]
        return subprocess.run(cmd + sys.argv[2:], cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
