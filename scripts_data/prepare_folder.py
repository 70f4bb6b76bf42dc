"""Prepare a dataset in the ImageFolder layout (Imagenette's) for `dataset: folder`.

    python scripts_data/prepare_folder.py --data_root data/imagenette2 --json_root data/imagenette2/prepared
        [--test-fraction 0.7134 --seed 0]

data_root holds train/<class>/*, val/<class>/* and optionally test/<class>/* (and optionally classes.txt,
"<folder> <class name>" per line). Without test/, --test-fraction of each class's val images become the
test split (seeded; the default is the thesis's 2,800 of Imagenette's 3,925). Writes folder_index.json and
splits.json to --json_root.
"""
import sys
from pathlib import Path

try:
    import lottery_xai  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lottery_xai.cli import data_parser, data_script
from lottery_xai.data.folder import THESIS_TEST_FRACTION, prepare_folder


@data_script
def main(argv=None) -> str:
    parser = data_parser(__doc__, data_root="folder holding train/ and val/ (and optionally test/)",
                         json_root="where folder_index.json and splits.json are written", seed="seed of the val/test split")
    parser.add_argument("--test-fraction", type=float, default=THESIS_TEST_FRACTION,
                        help="without a test/ folder: share of each class's val images that become the test split")
    args = parser.parse_args(argv)
    summary = prepare_folder(args.data_root, args.json_root, test_fraction=args.test_fraction, seed=args.seed)
    return (f"folder dataset: {summary['n_classes']} classes, train/val/test {summary['n_train']}/{summary['n_val']}/"
            f"{summary['n_test']} images ({'test folder' if summary['test_folder'] else 'val split seeded'}) "
            f"in {summary['json_root']}")


if __name__ == "__main__":
    sys.exit(main())
