"""Step 5: TCAV scores with significance tests for every round -> tcav/tcav_scores.csv

    python main_lth_tcav.py [--config config/BB_synthetic.yaml] [--set labels_for_tcav=[CLASS]] [--force]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("tcav", __doc__)
