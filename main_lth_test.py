"""Step 2: test accuracy and loss of every pruning round -> test/metrics.csv, test/per_class.csv.

    python main_lth_test.py [--config config/BB_synthetic.yaml] [--rounds 0,3,7] [--force]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("test", __doc__)
