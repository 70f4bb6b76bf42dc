"""Replicates: mean and interval over the seed runs of one config, and the null bands of change
-> {logs}/{run name with seed<k> replaced by seeds<a>-<b>-...}/ (accuracy.csv, tcav.csv, metrics.csv,
null_bands.csv, plots/*.png)

    python main_aggregate.py [--config config/BB_synthetic.yaml] --seeds 0,1,2 [--set ...] [--force]
    (bash bash_script/run_seeds.sh --seeds 0,1,2 runs the seeds first, then this)
"""
from lottery_xai.cli import main_entry, parse
from lottery_xai.pipeline.aggregate import aggregate_step, parse_seeds
from lottery_xai.pipeline.plots import aggregate_plots


def _seeds_option(p):
    p.add_argument("--seeds", required=True, help="comma-separated seeds of the replicates, e.g. 0,1,2")


@main_entry
def main():
    args, cfg = parse(__doc__, extra=_seeds_option)
    seeds = parse_seeds(args.seeds)
    aggregate_step(cfg, seeds, force=args.force)
    aggregate_plots(cfg, seeds)  # the figures of the replicates (step 8 of each seed run draws the null bands)


if __name__ == "__main__":
    main()
