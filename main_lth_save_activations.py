"""Step 3: bottleneck activations of every round and split -> activations/round_XX/{split}_{layer}.npy

    python main_lth_save_activations.py [--config config/BB_synthetic.yaml] [--rounds 0,7] [--force]
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.activations import activations_step
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    activations_step(RunDir(cfg), resolve_device(cfg.device), args.round_list, force=args.force)


if __name__ == "__main__":
    main()
