"""Step 6: attribution maps (Grad-CAM and the others) of the same test images at every round
-> heatmaps/round_XX/{method}.npz and round-by-round grids in plots/

    python main_heatmap_save.py [--config config/BB_synthetic.yaml] [--set heatmaps.methods=[gradcam]] [--force]
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.steps import heatmaps_step


@main_entry
def main():
    args, cfg = parse(__doc__)
    heatmaps_step(cfg, resolve_device(cfg.device), args.round_list, force=args.force)


if __name__ == "__main__":
    main()
