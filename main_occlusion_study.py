"""The occlusion-sensitivity study: random squares filled with the image's mean colour, the z-scored drop
of the class probability, and the squares that matter, at every round
-> occlusion/occlusion.csv, occlusion/round_XX/study.npz, plots/occlusion_masks.png

    python main_occlusion_study.py [--config config/BB_synthetic.yaml] [--rounds 0,4] [--force]
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.occlusion_study import occlusion_step
from lottery_xai.report import plot_occlusion
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    occlusion_step(RunDir(cfg), resolve_device(cfg.device), args.round_list, force=args.force)
    plot_occlusion(cfg)  # the step computes; its figure is drawn here


if __name__ == "__main__":
    main()
