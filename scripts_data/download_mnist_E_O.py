"""Prepare MNIST (datasets mnist_eo, even/odd, and mnist, the ten digits): splits.json and source.json.

    python scripts_data/download_mnist_E_O.py --data_root DIR --json_root DIR [--source auto|idx|sklearn --seed 0 --val-fraction 0.1]

`idx` reads the standard MNIST IDX files (train-images-idx3-ubyte[.gz], ...) from
--data_root and uses the real 10k test set; `sklearn` uses scikit-learn's bundled
8x8 digits (offline); `auto` picks idx when the files are there.
"""
import sys
from pathlib import Path

try:
    import lottery_xai  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lottery_xai.cli import data_parser, data_script
from lottery_xai.data.mnist import prepare_mnist_eo


@data_script
def main(argv=None) -> str:
    parser = data_parser(__doc__, data_root="folder with the MNIST IDX files (if any)",
                         json_root="where splits.json and source.json go", seed="seed of the validation split",
                         val_fraction="share of each class's training images kept for validation")
    parser.add_argument("--source", choices=("auto", "idx", "sklearn"), default="auto",
                        help="idx: the MNIST IDX files in --data_root; sklearn: scikit-learn's 8x8 digits; auto: idx when "
                             "the files are there")
    args = parser.parse_args(argv)
    summary = prepare_mnist_eo(args.data_root, args.json_root, source=args.source, seed=args.seed,
                               val_fraction=args.val_fraction)
    return (f"MNIST (datasets mnist and mnist_eo) prepared from {summary['source']}: train/val/test "
            f"{summary['n_train']}/{summary['n_val']}/{summary['n_test']}; wrote splits.json and source.json in {args.json_root}")


if __name__ == "__main__":
    sys.exit(main())
