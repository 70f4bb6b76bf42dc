"""Step 7: faithfulness, localisation and consistency metrics of the stored maps, every round
-> metrics/explanations.csv

    python main_explanation_metrics.py [--config config/BB_synthetic.yaml] [--force]
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.metrics import metrics_step
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    metrics_step(RunDir(cfg), resolve_device(cfg.device), args.round_list, force=args.force)


if __name__ == "__main__":
    main()
