"""Sanity checks: the model-parameter randomisation test (Adebayo et al. 2018), cascading from the top
layer down, for every attribution method at the dense and the sparsest round
-> sanity/verdicts.csv, sanity/summary.csv, sanity/per_image.csv, sanity/sanity_checks.png

    python main_sanity_checks.py [--config config/BB_synthetic.yaml] [--rounds 0,4] [--force]
    (without --rounds: the rounds in sanity.rounds, default the dense and the sparsest; after step 6)
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.sanity import sanity_step
from lottery_xai.report import plot_sanity
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    sanity_step(RunDir(cfg), resolve_device(cfg.device), args.round_list if args.rounds else None, force=args.force)
    plot_sanity(cfg)  # the step computes; its figures are drawn here


if __name__ == "__main__":
    main()
