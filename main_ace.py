"""ACE concept discovery (after step 4): superpixels of each class's train images clustered into concepts at
the concept layer, every round, with CAVs, TCAV and the match to the dense round's concepts
-> ace/concepts.csv, ace/survival.csv, plots/ace_*.png

    python main_ace.py [--config config/BB_synthetic.yaml] [--rounds 0,4] [--force]
    (discovered concepts then go to steps 4 and 5 with --set "concepts_for_tcav=[all,ace:all]")
"""
from lottery_xai.cli import main_entry, parse, resolve_device
from lottery_xai.pipeline.ace import ace_step
from lottery_xai.report import plot_ace
from lottery_xai.rundir import RunDir


@main_entry
def main():
    args, cfg = parse(__doc__)
    ace_step(RunDir(cfg), resolve_device(cfg.device), args.round_list, force=args.force)
    plot_ace(cfg)  # the step computes; its figures are drawn here


if __name__ == "__main__":
    main()
