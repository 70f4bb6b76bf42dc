"""Step 6: attribution maps (Grad-CAM and the others) of the same test images at every round
-> heatmaps/round_XX/{method}.npz and round-by-round grids in plots/

    python main_heatmap_save.py [--config config/BB_synthetic.yaml] [--set heatmaps.methods=[gradcam]] [--force]
"""
from lottery_xai.cli import run_step

if __name__ == "__main__":
    run_step("heatmaps", __doc__)
