"""Step 1 under torchrun: 2 processes on the CPU (gloo). Masks agree on every rank, only rank 0
writes, and a rerun skips the finished rounds and leaves the same files."""
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.pipeline.prune import LotteryRun, mask_digest
from lottery_xai.safe_io import load_torch
from lottery_xai.training.distributed import Distributed

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]

# Every file the pipeline writes ends in os.replace (atomic writes): record which rank did it.
LAUNCHER = textwrap.dedent("""
    import os, runpy, sys
    _replace = os.replace
    def replace(src, dst, *a, **k):
        with open(os.path.join(os.environ["WRITES_LOG"], "rank" + os.environ["RANK"] + ".txt"), "a") as fh:
            fh.write(os.fspath(dst) + "\\n")
        return _replace(src, dst, *a, **k)
    os.replace = replace
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def _torchrun(tmp_path, overrides, port):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    writes = tmp_path / "writes"
    writes.mkdir(exist_ok=True)
    for f in writes.glob("*.txt"):
        f.unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", WRITES_LOG=str(writes), PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(launcher), "main_lth_pruning.py"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return {f.stem: f.read_text().split() for f in writes.glob("*.txt")}, proc


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".lock"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, tmp_path / "logs", "prune_iterations=2", "data.num_workers=0")
    writes, proc = _torchrun(tmp_path, overrides, _free_port())
    cfg = load_config(None, overrides)
    run = rd.RunDir(cfg)
    assert run.finished_rounds() == [0, 1, 2]
    assert "rank1" not in writes and len(writes.get("rank0", [])) > 0  # only rank 0 wrote
    assert all(Path(p).resolve().is_relative_to(run.root.resolve()) for p in writes["rank0"])
    assert not list(run.root.rglob("resume.pt")) and not list(run.root.rglob("*.tmp"))
    assert proc.stdout.count("step 1 done") == 1  # rank 1 prints nothing
    # pruning happened and masks only shrink (each rank pruned on its own and agreed: the run did not stop)
    m1, m2 = (load_torch(run.checkpoint(r))["masks"] for r in (1, 2))
    assert all(not (m2[n] & ~m1[n]).any() for n in m1) and any((~m2[n]).any() for n in m2)
    before = _digests(run.root)

    writes, proc = _torchrun(tmp_path, overrides, _free_port())  # rerun: every round is complete
    assert "complete, skipped" in proc.stdout
    after = _digests(run.root)
    changed = {k for k in before if before[k] != after.get(k)}
    assert set(before) == set(after) and changed <= {"config.pruning.yaml"}, changed


def _disagreeing_rank(rank, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        lr = LotteryRun.__new__(LotteryRun)
        lr.dist = Distributed(rank, 2, rank)
        masks = {"w": torch.tensor([True, rank == 0])}
        same = {"w": torch.tensor([True, False])}
        lr.check_same_on_ranks(0, same)  # equal masks pass
        try:
            lr.check_same_on_ranks(1, masks)
            Path(out, f"{rank}.txt").write_text("no error")
        except RuntimeError as exc:
            Path(out, f"{rank}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_masks_stop(tmp_path):
    mp.start_processes(_disagreeing_rank, args=(tmp_path / "init", tmp_path), nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        text = (tmp_path / f"{rank}.txt").read_text()
        assert "round 1: the processes computed different masks" in text, text


def test_mask_digest_sees_every_bit():
    a = {"x": torch.ones(3, 4, dtype=torch.bool), "y": torch.zeros(5, dtype=torch.bool)}
    b = {k: v.clone() for k, v in a.items()}
    assert mask_digest(a) == mask_digest(b)
    b["x"][2, 3] = False
    assert mask_digest(a) != mask_digest(b)
    assert mask_digest({"x": torch.ones(12, dtype=torch.bool)}) != mask_digest({"x": torch.ones(3, 4, dtype=torch.bool)})

