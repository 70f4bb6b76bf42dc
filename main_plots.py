"""Step 8: every figure of the run from the files on disk -> plots/*.png

    python main_plots.py [--config config/BB_synthetic.yaml]
"""
from lottery_xai.cli import main_entry, parse
from lottery_xai.report import make_all_plots
from lottery_xai.rundir import RunDir


@main_entry
def main():
    _, cfg = parse(__doc__)
    written = make_all_plots(cfg)
    print(f"step 8 done: {len(written)} figures in {RunDir(cfg).root / 'plots'}")


if __name__ == "__main__":
    main()
