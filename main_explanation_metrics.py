"""Step 7: faithfulness, localisation and consistency metrics of the stored maps, every round
-> metrics/explanations.csv

    python main_explanation_metrics.py [--config config/BB_synthetic.yaml] [--force]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("metrics", __doc__)
