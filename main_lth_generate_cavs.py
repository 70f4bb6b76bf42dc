"""Step 4: concept and random CAVs of every round and layer -> cavs/round_XX/{layer}.npz, cavs/cav_accuracy.csv

    python main_lth_generate_cavs.py [--config config/BB_synthetic.yaml] [--rounds 0,7] [--force]
"""
from lottery_xai.cli import main_entry, parse
from lottery_xai.pipeline.cavs import cavs_step
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    cavs_step(RunDir(cfg), args.round_list, force=args.force)


if __name__ == "__main__":
    main()
