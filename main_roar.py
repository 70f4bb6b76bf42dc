"""ROAR (remove and retrain): maps of a round's model rank every pixel of every image; the top
p % are replaced by the training mean and the architecture is retrained from scratch
-> roar/roar.csv and plots/roar.png

    python main_roar.py [--config config/BB_synthetic.yaml] [--rounds 0,5] [--force]
    (without --rounds: the rounds in roar.rounds, default the dense round 0)
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.config import configured_rounds
from lottery_xai.pipeline.roar import roar_step
from lottery_xai.report import plot_roar
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    rounds = args.round_list if args.rounds else configured_rounds(cfg, "roar.rounds")  # -1 = the sparsest
    roar_step(RunDir(cfg), resolve_device(cfg.device), rounds, force=args.force)
    plot_roar(cfg)  # the step computes; its figure is drawn here (and again by step 8)


if __name__ == "__main__":
    main()
