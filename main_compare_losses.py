"""Compare runs trained with different losses (cross-entropy and CGC): accuracy, transformation
consistency, content heatmap, insertion AUC and consistency with the dense map at every round
-> {logs}/loss_comparison.csv and .png
    python main_compare_losses.py [--config config/BB_synthetic.yaml] [--losses cross_entropy,cgc]
"""
from pathlib import Path

from lottery_xai.cli import main_entry, parse
from lottery_xai.config import replace
from lottery_xai.report import compare_losses


def _losses(p):
    p.add_argument("--losses", default="cross_entropy,cgc", help="comma-separated train.loss values to compare")


@main_entry
def main():
    args, cfg = parse(__doc__, extra=_losses)
    configs = {loss: replace(cfg, **{"train.loss": loss}) for loss in args.losses.split(",") if loss}
    compare_losses(configs, Path(cfg.logs))


if __name__ == "__main__":
    main()
