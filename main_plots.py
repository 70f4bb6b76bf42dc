"""Step 8: every figure of the run from the files on disk -> plots/*.png

    python main_plots.py [--config config/BB_synthetic.yaml]
"""
from lottery_xai.cli import main_entry, parse
from lottery_xai.pipeline.plots import plots_step
from lottery_xai.rundir import RunDir


@main_entry
def main():
    _, cfg = parse(__doc__)
    plots_step(RunDir(cfg))


if __name__ == "__main__":
    main()
