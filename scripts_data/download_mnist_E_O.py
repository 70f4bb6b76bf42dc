"""Prepare MNIST (datasets mnist_eo, even/odd, and mnist, the ten digits): splits.json and source.json.

    python scripts_data/download_mnist_E_O.py --data_root DIR --json_root DIR [--source auto|idx|sklearn --seed 0 --val-fraction 0.1]

`idx` reads the standard MNIST IDX files (train-images-idx3-ubyte[.gz], ...) from
--data_root and uses the real 10k test set; `sklearn` uses scikit-learn's bundled
8x8 digits (offline); `auto` picks idx when the files are there.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package (python puts scripts_data/ first)
from lottery_xai.cli import data_command  # noqa: E402

main = data_command("download_mnist_E_O", __doc__)

if __name__ == "__main__":
    sys.exit(main())
