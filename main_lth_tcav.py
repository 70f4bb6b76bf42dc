"""Step 5: TCAV scores with significance tests for every round -> tcav/tcav_scores.csv

    python main_lth_tcav.py [--config config/BB_synthetic.yaml] [--set labels_for_tcav=[CLASS]] [--force]
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.tcav import tcav_step
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    tcav_step(RunDir(cfg), resolve_device(cfg.device), args.round_list, force=args.force)


if __name__ == "__main__":
    main()
