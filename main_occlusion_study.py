"""The occlusion-sensitivity study: random squares filled with the image's mean colour, the z-scored drop
of the class probability, and the squares that matter, at every round
-> occlusion/occlusion.csv, occlusion/round_XX/study.npz, plots/occlusion_masks.png

    python main_occlusion_study.py [--config config/BB_synthetic.yaml] [--rounds 0,4] [--force]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("occlusion_study", __doc__)
