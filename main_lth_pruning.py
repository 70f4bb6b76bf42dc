"""Step 1: train the dense network, then prune it round by round (IMP with rewinding).

    python main_lth_pruning.py [--config config/BB_synthetic.yaml] [--set pruning.rewind=reinit] [--rounds 0,1]
    torchrun --nproc_per_node=N main_lth_pruning.py ...   # DistributedDataParallel; rank 0 writes
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.lottery import LotteryRun, setup_distributed


@main_entry
def main():
    args, cfg = parse(__doc__)
    device = resolve_device(cfg.device)
    dist = setup_distributed(device)
    if dist.world > 1 and device.type == "cuda":
        import torch

        device = torch.device("cuda", dist.local_rank)
    run = LotteryRun(cfg, device, force=args.force, dist=dist)
    summary = run.run_rounds(args.round_list)
    if dist.main:
        print(summary.to_string(index=False))
        print(f"step 1 done: checkpoints and summary in {run.run.pruning_dir}")


if __name__ == "__main__":
    main()
