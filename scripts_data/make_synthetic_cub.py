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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package (python puts scripts_data/ first)
from lottery_xai.cli import data_command  # noqa: E402

main = data_command("make_synthetic_cub", __doc__)

if __name__ == "__main__":
    sys.exit(main())
