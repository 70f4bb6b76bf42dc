"""Step 3: bottleneck activations of every round and split -> activations/round_XX/{split}_{layer}.npy

    python main_lth_save_activations.py [--config config/BB_synthetic.yaml] [--rounds 0,7] [--force]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("activations", __doc__)
