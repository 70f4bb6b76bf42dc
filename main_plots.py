"""Step 8: every figure of the run from the files on disk -> plots/*.png

    python main_plots.py [--config config/BB_synthetic.yaml]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("plots", __doc__)
