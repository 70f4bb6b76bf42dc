"""Step 2: test accuracy and loss of every pruning round -> test/metrics.csv, test/per_class.csv.

    python main_lth_test.py [--config config/BB_synthetic.yaml] [--rounds 0,3,7] [--force]
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.test import evaluate_rounds
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    metrics = evaluate_rounds(RunDir(cfg), resolve_device(cfg.device), args.round_list, force=args.force)
    print(metrics.to_string(index=False))
    print(f"step 2 done: {RunDir(cfg).test_metrics()}")


if __name__ == "__main__":
    main()
