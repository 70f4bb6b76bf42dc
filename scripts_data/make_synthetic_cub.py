"""Generate the embedded synthetic birds dataset in the CUB-200-2011 layout.

    python scripts_data/make_synthetic_cub.py --out data/synthetic_cub [--n-classes 12 --images-per-class 150
        --image-size 96 --seed 0 --train-fraction 0.6 --attributes 25] [--json_root DIR]

--attributes 312 writes CUB's 312 attributes (28 groups: 10 drawn, 17 label-only, CUB's majority filter
keeps about 110 of them at --min-classes 10) and allows up to 1000 classes; --cub-scale is CUB's size:
--n-classes 200 --images-per-class 60 --attributes 312 --train-fraction 0.5 (12,000 images, half of each
class for training, as CUB; give --image-size, e.g. 64).
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
from lottery_xai.data.synthetic import (
    ATTRIBUTE_SETS, CUB_SCALE, generate_synthetic_cub, prepare_synthetic_cub, write_image_folder)
from lottery_xai.cli import data_script


@data_script
def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the dataset into")
    parser.add_argument("--n-classes", type=int, default=None, help="number of classes (default 12; 200 with --cub-scale)")
    parser.add_argument("--images-per-class", type=int, default=None,
                        help="images per class (default 150; 60 with --cub-scale)")
    parser.add_argument("--attributes", type=int, default=None, choices=sorted(ATTRIBUTE_SETS),
                        help="number of attributes: 25, the default birds, or 312, CUB's attributes "
                             "(default 25; 312 with --cub-scale)")
    parser.add_argument("--cub-scale", action="store_true", help="CUB's size: 200 classes, 60 images per class, "
                        "312 attributes, train fraction 0.5 (those options, when given, take precedence)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=None,
                        help="share of each class in CUB's training split (default 0.6; 0.5 with --cub-scale)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    parser.add_argument("--json_root", default=None, help="also write splits.json and concepts.json here")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="with --json_root: share of train kept for validation")
    parser.add_argument("--image-folder", default=None, help="also write the images here in the ImageFolder layout "
                        "(train/<class>/*, val/<class>/*) and prepare it in <dir>/prepared for dataset: folder")
    parser.add_argument("--test-fraction", type=float, default=0.5,
                        help="with --image-folder: share of each class's val images that become the test split")
    args = parser.parse_args(argv)
    defaults = CUB_SCALE if args.cub_scale else {"n_classes": 12, "images_per_class": 150, "n_attributes": 25,
                                                 "train_fraction": 0.6}
    sizes = {"n_classes": args.n_classes, "images_per_class": args.images_per_class, "n_attributes": args.attributes,
             "train_fraction": args.train_fraction}
    sizes = {key: defaults[key] if value is None else value for key, value in sizes.items()}
    start = time.perf_counter()
    summary = generate_synthetic_cub(args.out, **sizes, image_size=args.image_size, seed=args.seed,
                                     overwrite=args.overwrite)
    if args.json_root:
        prepared = prepare_synthetic_cub(args.out, args.json_root, seed=args.seed, **sizes,
                                         image_size=args.image_size, val_fraction=args.val_fraction)
    if args.image_folder:
        write_image_folder(args.out, args.image_folder, overwrite=args.overwrite)
        folder = prepare_folder(args.image_folder, Path(args.image_folder) / "prepared",
                                test_fraction=args.test_fraction, seed=args.seed)
    state = "already there" if summary["skipped"] else "written"
    line = f"synthetic CUB: {summary['n_images']} images {state} in {args.out} ({time.perf_counter() - start:.1f} s)"
    if args.json_root:
        line += (f"; splits train/val/test {prepared['n_train']}/{prepared['n_val']}/{prepared['n_test']}, "
                 f"{prepared['n_concepts']} of {prepared['n_attributes']} attributes kept as concepts "
                 f"(min_classes={prepared['min_classes']}) in {args.json_root}")
    if args.image_folder:
        line += (f"; ImageFolder layout in {args.image_folder} (train/val/test {folder['n_train']}/{folder['n_val']}/"
                 f"{folder['n_test']}, prepared in {Path(args.image_folder) / 'prepared'})")
    return line


if __name__ == "__main__":
    sys.exit(main())
