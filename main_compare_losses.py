"""Compare runs trained with different losses (cross-entropy and CGC): accuracy, transformation
consistency, content heatmap, insertion AUC and consistency with the dense map at every round
-> {logs}/loss_comparison.csv and .png
    python main_compare_losses.py [--config config/BB_synthetic.yaml] [--losses cross_entropy,cgc]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("compare_losses", __doc__)
