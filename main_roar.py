"""ROAR (remove and retrain): maps of a round's model rank every pixel of every image; the top
p % are replaced by the training mean and the architecture is retrained from scratch
-> roar/roar.csv and plots/roar.png

    python main_roar.py [--config config/BB_synthetic.yaml] [--rounds 0,5] [--force]
    (without --rounds: the rounds in roar.rounds, default the dense round 0)
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("roar", __doc__)
