"""Tests for icefall_cif/dist.py: env helpers, a 2-process gloo group via spawn and torchrun."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from icefall_cif.checkpoint import save_checkpoint
from icefall_cif.dist import (
    cleanup_dist,
    get_local_rank,
    get_rank,
    get_world_size,
    is_torchrun,
    setup_dist,
)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_helpers_without_process_group(clean_env):
    assert (get_rank(), get_world_size(), get_local_rank(), is_torchrun()) == (0, 1, 0, False)
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "8")
    clean_env.setenv("LOCAL_RANK", "1")
    assert (get_rank(), get_world_size(), get_local_rank()) == (3, 8, 1)
    assert not is_torchrun()
    clean_env.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert is_torchrun()


def test_setup_dist_argument_errors(clean_env):
    with pytest.raises(ValueError, match="needs rank and world_size"):
        setup_dist()
    with pytest.raises(ValueError, match="rank must be in"):
        setup_dist(2, 2, master_port=_free_port())
    assert not dist.is_initialized()


def _spawn_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    for key in ENV_KEYS:
        os.environ.pop(key, None)
    setup_dist(rank, world_size, master_port=port)
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    torch.manual_seed(0)
    model = DDP(nn.Linear(3, 2))
    # every rank calls save; only rank 0 may write
    save_checkpoint(os.path.join(out_dir, f"from-rank-{rank}.pt"), model, rank=get_rank())
    info = {
        "rank": get_rank(),
        "world_size": get_world_size(),
        "local_rank": get_local_rank(),
        "env_rank": os.environ["RANK"],
        "backend": dist.get_backend(),
        "sum": value.item(),
    }
    cleanup_dist()
    info["initialized_after_cleanup"] = dist.is_initialized()
    with open(os.path.join(out_dir, f"rank-{rank}.json"), "w") as f:
        json.dump(info, f)


def test_spawn_two_processes_gloo(tmp_path):
    mp.spawn(_spawn_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        info = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert info == {
            "rank": rank,
            "world_size": 2,
            "local_rank": rank,
            "env_rank": str(rank),
            "backend": "gloo",
            "sum": 3.0,  # 1 + 2
            "initialized_after_cleanup": False,
        }
    assert (tmp_path / "from-rank-0.pt").exists()
    assert not (tmp_path / "from-rank-1.pt").exists()
    saved = torch.load(tmp_path / "from-rank-0.pt", weights_only=True)
    assert set(saved["model"]) == {"weight", "bias"}  # no DDP `module.` prefix


def test_torchrun_two_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, os, sys
            import torch
            import torch.distributed as dist
            from icefall_cif.dist import (
                cleanup_dist, get_local_rank, get_rank, get_world_size, is_torchrun, setup_dist
            )

            setup_dist(master_port=1)  # torchrun's own port must win over this one
            value = torch.tensor([10.0 ** get_rank()])
            dist.all_reduce(value)
            info = [is_torchrun(), get_rank(), get_world_size(), get_local_rank(), value.item()]
            cleanup_dist()
            with open(os.path.join(sys.argv[1], f"rank-{info[1]}.json"), "w") as f:
                json.dump(info, f)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), str(script), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        info = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert info == [True, rank, 2, rank, 11.0]  # 10**0 + 10**1
