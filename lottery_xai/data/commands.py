"""The data-preparation commands (``scripts_data/*.py``), one declaration each: the options a command takes
and what it does, returning its one-line summary.

A script in ``scripts_data/`` is one call, ``main = lottery_xai.cli.data_command("<key>", __doc__)``, as a
``main_*.py`` script is one call of ``run_step``: the command line (:func:`lottery_xai.cli.data_command`)
builds the parser from the declaration, the options several commands share (:data:`SHARED`: ``--data_root``,
``--json_root``, ``--seed``, ``--val-fraction``) with the help text the command gives each, then the
command's own (``options``); it prints the summary, and turns a UserError or a failed read or write into
one line and exit status 2.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .cub import prepare_cub
from .folder import THESIS_TEST_FRACTION, prepare_folder
from .mnist import prepare_mnist_eo
from .synthetic import ATTRIBUTE_SETS, CUB_SCALE, generate_synthetic_cub, prepare_synthetic_cub, write_image_folder

# The options several commands take: name -> (flag, argparse settings); a command gives each its help text.
SHARED = {"data_root": ("--data_root", {"required": True}), "json_root": ("--json_root", {"required": True}),
          "seed": ("--seed", {"type": int, "default": 0}),
          "val_fraction": ("--val-fraction", {"type": float, "default": 0.1})}
VAL_HELP = "share of each class's training images kept for validation"


@dataclass(frozen=True)
class DataCommand:
    key: str                                               # its script: scripts_data/<key>.py
    run: Callable[[argparse.Namespace], str]               # does the work, returns the summary line
    shared: dict[str, str] = field(default_factory=dict)   # the SHARED options it takes -> their help text
    options: Callable[[argparse.ArgumentParser], None] | None = None  # its own options


COMMANDS: dict[str, DataCommand] = {}


def command(key: str, *, options: Callable | None = None, **shared: str) -> Callable[[Callable], Callable]:
    """Declare the function ``fn(args) -> summary`` as the data command ``key`` (``shared``: option -> help)."""
    unknown = set(shared) - set(SHARED)
    if unknown:
        raise ValueError(f"data command '{key}': no shared option {sorted(unknown)} (see SHARED)")

    def declare(fn: Callable) -> Callable:
        COMMANDS[key] = DataCommand(key, fn, dict(shared), options)
        return fn

    return declare


# ---------------------------------------------------------------- CUB-200-2011 (or the synthetic data in its layout)

def _cub_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", default=None, help="CUB_200_2011.tgz or the extracted folder (default: already in --data_root)")
    parser.add_argument("--min-classes", type=int, default=None,
                        help="keep attributes on in at least this many classes (default: 10 for CUB, "
                             "the generator's recommendation for the synthetic data)")


@command("download_cub", options=_cub_options, data_root="where the CUB files live (an archive is extracted here)",
         json_root="where splits.json and concepts.json go", seed="seed of the validation split", val_fraction=VAL_HELP)
def download_cub(args: argparse.Namespace) -> str:
    s = prepare_cub(args.src, args.data_root, args.json_root, seed=args.seed, val_fraction=args.val_fraction,
                    min_classes=args.min_classes)
    return (f"CUB prepared: {s['n_classes']} classes, {s['n_concepts']} of {s['n_attributes']} attributes kept "
            f"(min_classes={s['min_classes']}), train/val/test {s['n_train']}/{s['n_val']}/{s['n_test']}; wrote "
            f"splits.json and concepts.json in {args.json_root}")


# ---------------------------------------------------------------- MNIST (even/odd, and the ten digits)

def _mnist_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=("auto", "idx", "sklearn"), default="auto",
                        help="idx: the MNIST IDX files in --data_root; sklearn: scikit-learn's 8x8 digits; auto: idx "
                             "when the files are there")


@command("download_mnist_E_O", options=_mnist_options, data_root="folder with the MNIST IDX files (if any)",
         json_root="where splits.json and source.json go", seed="seed of the validation split", val_fraction=VAL_HELP)
def download_mnist(args: argparse.Namespace) -> str:
    s = prepare_mnist_eo(args.data_root, args.json_root, source=args.source, seed=args.seed,
                         val_fraction=args.val_fraction)
    return (f"MNIST (datasets mnist and mnist_eo) prepared from {s['source']}: train/val/test "
            f"{s['n_train']}/{s['n_val']}/{s['n_test']}; wrote splits.json and source.json in {args.json_root}")


# ---------------------------------------------------------------- a folder dataset (ImageFolder layout)

def _folder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--test-fraction", type=float, default=THESIS_TEST_FRACTION,
                        help="without a test/ folder: share of each class's val images that become the test split")


@command("prepare_folder", options=_folder_options, data_root="folder holding train/ and val/ (and optionally test/)",
         json_root="where folder_index.json and splits.json are written", seed="seed of the val/test split")
def prepare_folder_command(args: argparse.Namespace) -> str:
    s = prepare_folder(args.data_root, args.json_root, test_fraction=args.test_fraction, seed=args.seed)
    where = "test folder" if s["test_folder"] else "val split seeded"
    return f"folder dataset: {s['n_classes']} classes, train/val/test {s['n_train']}/{s['n_val']}/{s['n_test']} " \
           f"images ({where}) in {s['json_root']}"


# ---------------------------------------------------------------- the embedded synthetic birds

def _synthetic_options(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--train-fraction", type=float, default=None,
                        help="share of each class in CUB's training split (default 0.6; 0.5 with --cub-scale)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    parser.add_argument("--json_root", default=None, help="also write splits.json and concepts.json here")
    parser.add_argument("--image-folder", default=None, help="also write the images here in the ImageFolder layout "
                        "(train/<class>/*, val/<class>/*) and prepare it in <dir>/prepared for dataset: folder")
    parser.add_argument("--test-fraction", type=float, default=0.5,
                        help="with --image-folder: share of each class's val images that become the test split")


@command("make_synthetic_cub", options=_synthetic_options, seed="seed of the dataset (and of its splits)",
         val_fraction="with --json_root: share of train kept for validation")
def make_synthetic_cub(args: argparse.Namespace) -> str:
    defaults = CUB_SCALE if args.cub_scale else {"n_classes": 12, "images_per_class": 150, "n_attributes": 25,
                                                 "train_fraction": 0.6}
    sizes = {"n_classes": args.n_classes, "images_per_class": args.images_per_class, "n_attributes": args.attributes,
             "train_fraction": args.train_fraction}
    sizes = {key: defaults[key] if value is None else value for key, value in sizes.items()}
    start = time.perf_counter()
    summary = generate_synthetic_cub(args.out, **sizes, image_size=args.image_size, seed=args.seed,
                                     overwrite=args.overwrite)
    state = "already there" if summary["skipped"] else "written"
    line = f"synthetic CUB: {summary['n_images']} images {state} in {args.out} ({time.perf_counter() - start:.1f} s)"
    if args.json_root:
        prepared = prepare_synthetic_cub(args.out, args.json_root, seed=args.seed, **sizes,
                                         image_size=args.image_size, val_fraction=args.val_fraction)
        line += (f"; splits train/val/test {prepared['n_train']}/{prepared['n_val']}/{prepared['n_test']}, "
                 f"{prepared['n_concepts']} of {prepared['n_attributes']} attributes kept as concepts "
                 f"(min_classes={prepared['min_classes']}) in {args.json_root}")
    if args.image_folder:
        write_image_folder(args.out, args.image_folder, overwrite=args.overwrite)
        prepared_folder = Path(args.image_folder) / "prepared"
        folder = prepare_folder(args.image_folder, prepared_folder, test_fraction=args.test_fraction, seed=args.seed)
        line += (f"; ImageFolder layout in {args.image_folder} (train/val/test {folder['n_train']}/{folder['n_val']}/"
                 f"{folder['n_test']}, prepared in {prepared_folder})")
    return line
