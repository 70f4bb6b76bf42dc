"""Step 1: train the dense network, then prune it round by round (IMP with rewinding).

    python main_lth_pruning.py [--config config/BB_synthetic.yaml] [--set pruning.rewind=reinit] [--rounds 0,1]
    torchrun --nproc_per_node=N main_lth_pruning.py ...   # DistributedDataParallel; rank 0 writes
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("pruning", __doc__)
