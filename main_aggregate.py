"""Replicates: mean and interval over the seed runs of one config, and the null bands of change
-> {logs}/{run name with seed<k> replaced by seeds<a>-<b>-...}/ (accuracy.csv, tcav.csv, metrics.csv,
null_bands.csv, plots/*.png)

    python main_aggregate.py [--config config/BB_synthetic.yaml] --seeds 0,1,2 [--set ...] [--force]
    (bash bash_script/run_seeds.sh --seeds 0,1,2 runs the seeds first, then this)
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("aggregate", __doc__)
