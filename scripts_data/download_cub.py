"""Prepare CUB-200-2011 (or the synthetic dataset in its layout): concept denoising and splits.

    python scripts_data/download_cub.py --src PATH/TO/CUB_200_2011.tgz --data_root DIR --json_root DIR
        [--seed 0 --val-fraction 0.1 --min-classes 10]

CUB cannot be downloaded from here: get CUB_200_2011.tgz from
https://www.vision.caltech.edu/datasets/cub_200_2011/ and pass its path (or the
extracted CUB_200_2011 folder) as --src. Writes splits.json and concepts.json to --json_root.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package (python puts scripts_data/ first)
from lottery_xai.cli import data_command  # noqa: E402

main = data_command("download_cub", __doc__)

if __name__ == "__main__":
    sys.exit(main())
