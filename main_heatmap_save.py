"""Step 6: attribution maps (Grad-CAM and the others) of the same test images at every round
-> heatmaps/round_XX/{method}.npz and round-by-round grids in plots/

    python main_heatmap_save.py [--config config/BB_synthetic.yaml] [--set heatmaps.methods=[gradcam]] [--force]
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.heatmaps import heatmaps_step
from lottery_xai.report import plot_heatmaps
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    heatmaps_step(RunDir(cfg), resolve_device(cfg.device), args.round_list, force=args.force)
    for method in cfg.heatmaps.methods:  # the step computes; the round-by-round grids are drawn here
        plot_heatmaps(cfg, method)
    print(f"grids in {RunDir(cfg).plot('heatmaps_' + cfg.heatmaps.methods[0]).parent}")


if __name__ == "__main__":
    main()
