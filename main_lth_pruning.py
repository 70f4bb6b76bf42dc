"""Step 1: train the dense network, then prune it round by round (IMP with rewinding).

    python main_lth_pruning.py [--config config/BB_synthetic.yaml] [--set pruning.rewind=reinit] [--rounds 0,1]
    torchrun --nproc_per_node=N main_lth_pruning.py ...   # DistributedDataParallel; rank 0 writes
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.prune import prune_step
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    prune_step(RunDir(cfg), resolve_device(cfg.device), args.round_list, force=args.force)


if __name__ == "__main__":
    main()
