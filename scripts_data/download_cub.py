"""Prepare CUB-200-2011 (or the synthetic dataset in its layout): concept denoising and splits.

    python scripts_data/download_cub.py --src PATH/TO/CUB_200_2011.tgz --data_root DIR --json_root DIR
        [--seed 0 --val-fraction 0.1 --min-classes 10]

CUB cannot be downloaded from here: get CUB_200_2011.tgz from
https://www.vision.caltech.edu/datasets/cub_200_2011/ and pass its path (or the
extracted CUB_200_2011 folder) as --src. Writes splits.json and concepts.json to --json_root.
"""
import sys
from pathlib import Path

try:
    import lottery_xai  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lottery_xai.cli import data_parser, data_script
from lottery_xai.data.cub import prepare_cub


@data_script
def main(argv=None) -> str:
    parser = data_parser(__doc__, data_root="where the CUB files live (an archive is extracted here)",
                         json_root="where splits.json and concepts.json go", seed="seed of the validation split",
                         val_fraction="share of each class's training images kept for validation")
    parser.add_argument("--src", default=None, help="CUB_200_2011.tgz or the extracted folder (default: already in --data_root)")
    parser.add_argument("--min-classes", type=int, default=None,
                        help="keep attributes on in at least this many classes (default: 10 for CUB, "
                             "the generator's recommendation for the synthetic data)")
    args = parser.parse_args(argv)
    summary = prepare_cub(args.src, args.data_root, args.json_root, seed=args.seed,
                          val_fraction=args.val_fraction, min_classes=args.min_classes)
    return (f"CUB prepared: {summary['n_classes']} classes, {summary['n_concepts']} of {summary['n_attributes']} "
            f"attributes kept (min_classes={summary['min_classes']}), train/val/test "
            f"{summary['n_train']}/{summary['n_val']}/{summary['n_test']}; wrote splits.json and concepts.json in {args.json_root}")


if __name__ == "__main__":
    sys.exit(main())
