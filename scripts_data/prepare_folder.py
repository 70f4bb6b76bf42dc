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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package (python puts scripts_data/ first)
from lottery_xai.cli import data_command  # noqa: E402

main = data_command("prepare_folder", __doc__)

if __name__ == "__main__":
    sys.exit(main())
