"""Generate the embedded synthetic birds dataset in the CUB-200-2011 layout.

    python scripts_data/make_synthetic_cub.py --out data/synthetic_cub [--n-classes 12 --images-per-class 150
        --image-size 96 --seed 0 --train-fraction 0.6] [--json_root DIR]

With --json_root it also prepares the splits and concepts (as download_cub.py would).
With --image-folder DIR it also writes the images in the ImageFolder layout (DIR/train/<class>/*,
DIR/val/<class>/*; dataset: folder) and prepares it in DIR/prepared (as prepare_folder.py would).
"""
import argparse
import sys
import time
from pathlib import Path

try:
    import lottery_xai  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lottery_xai.data.folder import prepare_folder
from lottery_xai.data.synthetic import generate_synthetic_cub, prepare_synthetic_cub, write_image_folder
from lottery_xai.cli import data_script


@data_script
def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the dataset into")
    parser.add_argument("--n-classes", type=int, default=12)
    parser.add_argument("--images-per-class", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=0.6)
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    parser.add_argument("--json_root", default=None, help="also write splits.json and concepts.json here")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="with --json_root: share of train kept for validation")
    parser.add_argument("--image-folder", default=None, help="also write the images here in the ImageFolder layout "
                        "(train/<class>/*, val/<class>/*) and prepare it in <dir>/prepared for dataset: folder")
    parser.add_argument("--test-fraction", type=float, default=0.5,
                        help="with --image-folder: share of each class's val images that become the test split")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = generate_synthetic_cub(args.out, n_classes=args.n_classes, images_per_class=args.images_per_class,
                                     image_size=args.image_size, seed=args.seed,
                                     train_fraction=args.train_fraction, overwrite=args.overwrite)
    if args.json_root:
        prepared = prepare_synthetic_cub(args.out, args.json_root, seed=args.seed, n_classes=args.n_classes,
                                         images_per_class=args.images_per_class, image_size=args.image_size,
                                         train_fraction=args.train_fraction, val_fraction=args.val_fraction)
    if args.image_folder:
        write_image_folder(args.out, args.image_folder, overwrite=args.overwrite)
        folder = prepare_folder(args.image_folder, Path(args.image_folder) / "prepared",
                                test_fraction=args.test_fraction, seed=args.seed)
    state = "already there" if summary["skipped"] else "written"
    line = f"synthetic CUB: {summary['n_images']} images {state} in {args.out} ({time.perf_counter() - start:.1f} s)"
    if args.json_root:
        line += (f"; splits train/val/test {prepared['n_train']}/{prepared['n_val']}/{prepared['n_test']}, "
                 f"{prepared['n_concepts']} concepts in {args.json_root}")
    if args.image_folder:
        line += (f"; ImageFolder layout in {args.image_folder} (train/val/test {folder['n_train']}/{folder['n_val']}/"
                 f"{folder['n_test']}, prepared in {Path(args.image_folder) / 'prepared'})")
    return line


if __name__ == "__main__":
    sys.exit(main())
