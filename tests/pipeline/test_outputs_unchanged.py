"""The pipeline's outputs on a small run match checksums recorded before the package was reorganised
(issue 9: the house moved, the results did not).

The checksums are of canonical contents, not of file bytes: tables are read back, time columns
dropped and numbers written with 6 significant digits; arrays are scaled by their largest magnitude
and rounded to 5 decimals. So a rewrite that changes a column order or the bits of a float in the
last place still fails, while timings and zip headers do not count. They were recorded on this
project's CI machine kind (CPU, torch of pyproject's lower bounds or newer) with

    .venv/bin/python tests/pipeline/test_outputs_unchanged.py --record

which rewrites tests/pipeline/output_checksums.json. Record again only for a change that is meant to
change results, and say so in the commit.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
STORE = Path(__file__).resolve().parent / "output_checksums.json"
STEPS = ["main_lth_pruning.py", "main_lth_test.py", "main_lth_save_activations.py", "main_lth_generate_cavs.py",
         "main_lth_tcav.py", "main_heatmap_save.py", "main_explanation_metrics.py"]
TABLES = ["test/metrics.csv", "tcav/tcav_scores.csv", "cavs/cav_accuracy.csv", "metrics/explanations.csv",
          "pruning/summary.csv"]
TIME_COLUMNS = {"train_seconds", "seconds"}
EXTRA = ["train.epochs=2", "prune_iterations=2", "prune_percent=50", "cav.n_random=4", "cav.n_jobs=1",
         "heatmaps.images_per_class=2", "heatmaps.ig_steps=4", "heatmaps.grid_images=2", "metrics.n_transforms=1"]


def _table_digest(path: Path) -> str:
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    frame = frame[[c for c in frame.columns if c not in TIME_COLUMNS]]
    return hashlib.sha256(frame.to_csv(index=False, float_format="%.6g").encode()).hexdigest()[:16]


def _array_digest(path: Path) -> str:
    h = hashlib.sha256()
    with np.load(path, allow_pickle=False) as archive:
        for key in sorted(archive.files):
            a = archive[key]
            h.update(f"{key}:{a.dtype.kind}:{a.shape};".encode())
            if a.dtype.kind == "f":
                a = a.astype(np.float64)
                scale = float(np.nanmax(np.abs(a))) if a.size and np.isfinite(a).any() else 1.0
                a = np.round(a / (scale or 1.0), 5) + 0.0  # + 0.0: no negative zeros
                h.update(f"{scale:.6g}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def make_run(data: Path, logs: Path) -> Path:
    from conftest import tiny_overrides

    overrides = tiny_overrides(data, logs, *EXTRA)
    # the recording's environment: two threads, no inherited thread, shard or distributed variables (a
    # variable such as MKL_NUM_THREADS=1 changes the order of float sums, and so the last bits of the maps)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
           and not k.startswith(("LOTTERY_XAI_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="2", PYTHONHASHSEED="0")
    for script in STEPS:
        cmd = [sys.executable, script]
        for o in overrides:
            cmd += ["--set", o]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (script, proc.stderr[-3000:])
    (root,) = [p for p in logs.iterdir() if p.is_dir()]
    return root


def digests(root: Path) -> dict:
    out = {t: _table_digest(root / t) for t in TABLES}
    for path in sorted((root / "heatmaps").rglob("*.npz")):
        out[str(path.relative_to(root))] = _array_digest(path)
    return out


def test_outputs_match_the_recorded_checksums(tiny_data, tmp_path):
    recorded = json.loads(STORE.read_text())
    got = digests(make_run(tiny_data, tmp_path / "logs"))
    assert sorted(got) == sorted(recorded)
    changed = {k: (recorded[k], got[k]) for k in recorded if recorded[k] != got[k]}
    assert not changed, f"outputs changed: {changed}"


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from lottery_xai.data.synthetic import prepare_synthetic_cub

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"  # the same data as conftest's tiny_data fixture
        prepare_synthetic_cub(data, data / "prepared", seed=0, n_classes=4, images_per_class=12, image_size=32,
                              train_fraction=0.6, val_fraction=0.2)
        result = digests(make_run(data, Path(tmp) / "logs"))
    STORE.parent.mkdir(exist_ok=True)
    STORE.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(result)} checksums in {STORE}")
