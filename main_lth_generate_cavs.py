"""Step 4: concept and random CAVs of every round and layer -> cavs/round_XX/{layer}.npz, cavs/cav_accuracy.csv

    python main_lth_generate_cavs.py [--config config/BB_synthetic.yaml] [--rounds 0,7] [--force]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("cavs", __doc__)
