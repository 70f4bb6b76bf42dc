"""Sanity checks: the model-parameter randomisation test (Adebayo et al. 2018), cascading from the top
layer down, for every attribution method at the dense and the sparsest round
-> sanity/verdicts.csv, sanity/summary.csv, sanity/per_image.csv, sanity/sanity_checks.png

    python main_sanity_checks.py [--config config/BB_synthetic.yaml] [--rounds 0,4] [--force]
    (without --rounds: the rounds in sanity.rounds, default the dense and the sparsest; after step 6)
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("sanity", __doc__)
