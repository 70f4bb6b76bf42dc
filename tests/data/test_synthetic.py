"""The synthetic birds generator: its default output pinned to the byte, and the CUB-scale dataset."""
import hashlib
from pathlib import Path

import cv2

from lottery_xai.data.synthetic import generate_synthetic_cub

PINNED = dict(n_classes=4, images_per_class=3, image_size=32)

# sha256 of the files written by the generator for PINNED (seed 0, train_fraction 0.6), recorded from the code of
# commit 04c11dc, before the drawing was split into its own module and the CUB-scale options were added.
PINNED_FILES = {
    "attributes.txt": "e8b33abe7203eee0a1d260857041a643c85fbf044355cda97e38eeb82d20b18a",
    "attributes/attributes.txt": "e8b33abe7203eee0a1d260857041a643c85fbf044355cda97e38eeb82d20b18a",
    "attributes/certainties.txt": "219c52fbf28945796b0dda505765754c5f7116e883f911366ee11fb0e7714984",
    "attributes/class_attribute_labels_continuous.txt":
        "bac424b6f00bed27c04ac7e9f16f27570d19bac7b9016ab8ffc13aafd0c5379f",
    "attributes/image_attribute_labels.txt": "a6a07cc9a7d47a5b6ed522dc6583634fc7b4edb7fc29bb4c2c355044693bb9a0",
    "bounding_boxes.txt": "da176e0991cee11b3c700a0025c9cc7f774fefc95b32c5960545ff937d371d08",
    "class_attributes.json": "dc23bf2b38e031ff0da7c64014a1020763a6aec7a6a5928bfa78e58b6bb24097",
    "classes.txt": "378f295d35b4a174dc9ffc003866468e8c5cf1d3ddaf9ce6bc836567a29863b6",
    "image_class_labels.txt": "8ea85f0aa4d8d8e00e3882a66ba1831ddc43688f53bb7a2c22bdb8d35ad65f5f",
    "images.txt": "1474cf22f668d4a04c19728ad6f62711f9094ad418d2586ab6267e62e2ab074d",
    "parts/part_locs.txt": "3de5f9b668dff475e9241b6f86881c0db0d219ccd6bd8be3996e09fb6d4cd677",
    "parts/parts.txt": "411a4ab5c7622c1b93bf84dd1e9f69a8a2feaecd79753ed13cfc27ec0c2aeef0",
    "train_test_split.txt": "634036fdce91327180d835d417c86a3493ea42f627f4954579849bf4aeeae885",
}
# sha256 of the decoded pixels (BGR uint8, as cv2.imread returns them) rather than of the PNG files, whose bytes
# depend on the zlib/libpng build; recorded from the same code (OpenCV 5.1.0, NumPy 2.4.6).
PINNED_PIXELS = {
    "001.Red_winged_Black_crowned_Finch/Red_winged_Black_crowned_Finch_0001_1.png":
        "b535329b834ba37d1d55e662e30775225f2000738c1b3ce6ffa1fa83750aafd7",
    "002.Yellow_winged_Orange_crowned_Warbler/Yellow_winged_Orange_crowned_Warbler_0002_5.png":
        "7a874b3211076abbba7588b80e65c64281b41323048c7755b4f7e32e4012e5fe",
    "004.Blue_winged_White_crowned_Shrike/Blue_winged_White_crowned_Shrike_0003_12.png":
        "30cf709a0d349cca379d884b44a59277ca0683c55fc7f5d48fc65d16035e4aed",
}
PINNED_ALL_PIXELS = "a1053de4728e59540d2ed07b695215f918e3483e3dfe08e3775837457554b45e"  # every image, in path order


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_default_generator_output_is_unchanged(tmp_path):
    """The default attribute set (6 drawn groups, 25 attributes) writes what the code of 04c11dc wrote."""
    generate_synthetic_cub(tmp_path, **PINNED)
    files = {p.relative_to(tmp_path).as_posix(): p for p in sorted(Path(tmp_path).rglob("*")) if p.is_file()}
    tables = {name: _sha256(path.read_bytes()) for name, path in files.items() if not name.startswith("images/")}
    assert tables == PINNED_FILES
    images = sorted(name[len("images/"):] for name in files if name.startswith("images/"))
    assert len(images) == 12 and set(PINNED_PIXELS) <= set(images)
    everything = hashlib.sha256()
    for name in images:
        pixels = cv2.imread(str(tmp_path / "images" / name), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == (32, 32, 3)
        if name in PINNED_PIXELS:
            assert _sha256(pixels.tobytes()) == PINNED_PIXELS[name], name
        everything.update(pixels.tobytes())
    assert everything.hexdigest() == PINNED_ALL_PIXELS
