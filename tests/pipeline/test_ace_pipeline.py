"""ACE and the occlusion study on a tiny run: their files and figures, resuming, and discovered concepts
going through steps 4 and 5 like labelled ones."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient
from scipy import stats

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.errors import UserError
from lottery_xai.pipeline.ace import ace_step
from lottery_xai.pipeline.activations import activations_step
from lottery_xai.pipeline.cavs import cavs_step
from lottery_xai.pipeline.occlusion_study import occlusion_step
from lottery_xai.pipeline.prune import LotteryRun
from lottery_xai.pipeline.loading import load_data
from lottery_xai.pipeline.tcav import tcav_step
from lottery_xai.report import plot_ace, plot_occlusion

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
ROUNDS = [0, 2]
EXTRA = ["cav.n_random=3", "ace.n_segments=[4,8]", "ace.n_clusters=4", "ace.min_patches=2", "ace.max_patches=10",
         "ace.n_random=4", "occlusion_study.n_masks=40", "occlusion_study.images_per_class=2"]
REQUIRED = ["round", "class", "concept", "n_patches", "n_images", "cav_acc_mean", "tcav_mean", "tcav_std", "p_value",
            "significant", "matched_dense_concept", "match_cosine"]
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def ace_run(tiny_data, tmp_path_factory):
    logs = tmp_path_factory.mktemp("ace_logs")
    overrides = tiny_overrides(tiny_data, logs, *EXTRA)
    cfg = load_config(None, overrides)
    LotteryRun(rd.RunDir(cfg), CPU, log=quiet).run_rounds([0, 1, 2])
    activations_step(rd.RunDir(cfg), CPU, ROUNDS, log=quiet)
    cavs_step(rd.RunDir(cfg), ROUNDS, log=quiet)
    table = ace_step(rd.RunDir(cfg), CPU, ROUNDS, log=quiet)
    occlusion = occlusion_step(rd.RunDir(cfg), CPU, ROUNDS, log=quiet)
    plot_ace(rd.RunDir(cfg), log=quiet)
    plot_occlusion(rd.RunDir(cfg))
    return cfg, overrides, table, occlusion


def test_ace_files_and_concept_table(ace_run):
    cfg, _, table, _ = ace_run
    run = rd.RunDir(cfg)
    on_disk = pd.read_csv(run.ace_concepts())
    assert list(on_disk.columns)[:len(REQUIRED)] == REQUIRED
    assert set(on_disk["round"]) == set(ROUNDS) and len(on_disk) == len(table) > 0
    index = np.load(run.ace_patches())
    assert {"patch_image", "patch_res", "patch_label", "label_maps", "images"} <= set(index.files)
    train = load_data(cfg, ("train",), augment=False)[0]["train"]
    assert len(index["images"]) == len(train)  # every train image of the 4 classes (each has fewer than 40)
    for r in ROUNDS:
        clusters, cavs = np.load(run.ace_clusters(r)), np.load(run.ace_cavs(r))
        assert len(clusters["assignment"]) == len(index["patch_image"])
        acts = np.load(run.ace_patch_activations(r), mmap_mode="r")
        assert acts.shape == (len(index["patch_image"]), 64) and np.isfinite(acts).all()
        norms = np.linalg.norm(cavs["cavs"], axis=-1)
        assert np.allclose(norms[np.isfinite(norms)], 1, atol=1e-6)
        rows = on_disk[on_disk["round"] == r]
        assert len(rows) == len(cavs["concept_id"])
        assert (rows["n_patches"] > cfg.ace.min_patches).all()  # the rule's minimum
    assert on_disk["tcav_mean"].between(0, 1).all() and on_disk["p_value"].between(0, 1).all()
    dense = on_disk[on_disk["round"] == 0]
    assert (dense["matched_dense_concept"] == dense["concept"]).all()  # the dense round matches itself
    assert np.allclose(dense["match_cosine"], 1.0)
    assert dense["best_attribute"].str.startswith("has_").all()  # step 4's CAVs exist: every concept is matched
    survival = pd.read_csv(run.ace_survival())
    assert set(survival["status"]) <= {"survived", "vanished", "appeared"}
    assert (survival.loc[survival["round"] == 0, "status"] == "survived").all()


def test_figures_under_plots(ace_run):
    cfg, *_ = ace_run
    plots = {p.name for p in (rd.RunDir(cfg).root / "plots").glob("*.png")}
    for r in ("r00", "r02"):
        assert {f"ace_similarity_{r}.png", f"ace_pca_{r}.png"} <= plots
        assert len([p for p in plots if p.startswith(f"ace_patches_{r}_")]) == 4  # one per class
    assert {"ace_similarity_rounds.png", "ace_histograms.png", "occlusion_masks.png"} <= plots


def test_occlusion_table(ace_run):
    cfg, _, _, occlusion = ace_run
    run = rd.RunDir(cfg)
    assert len(occlusion) == len(ROUNDS) * 4 * 2  # rounds x classes x images per class
    study = np.load(run.occlusion_file(0))
    assert study["tops"].shape == (8, 40) and float(study["z_threshold"]) == pytest.approx(2.3263478740)
    assert (occlusion["mask_area"].between(0, 1)).all()
    assert occlusion["random_in_box"].between(0, 1).all() and occlusion["random_squares_in_box"].between(0, 1).all()
    lit = occlusion["mask_area"] > 0
    assert occlusion.loc[lit, "mask_in_box"].between(0, 1).all() and occlusion.loc[~lit, "mask_in_box"].isna().all()
    # the squares are the same at every round: the rounds differ by their model only
    assert np.array_equal(study["tops"], np.load(run.occlusion_file(2))["tops"])


def test_rerun_skips_and_scripts_exit_cleanly(ace_run):
    cfg, overrides, table, _ = ace_run
    run = rd.RunDir(cfg)
    files = [run.ace_clusters(0), run.ace_cavs(2), run.ace_patch_activations(2), run.ace_patches(),
             run.occlusion_file(0), run.occlusion_file(2)]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    before = pd.read_csv(run.ace_concepts())
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for script in ("main_ace.py", "main_occlusion_study.py"):
        done = subprocess.run([sys.executable, script, "--rounds", "0,2", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    pd.testing.assert_frame_equal(pd.read_csv(run.ace_concepts()), before)
    assert not list(run.root.rglob("*.tmp"))


def test_discovered_concepts_go_through_steps_4_and_5(ace_run):
    cfg, overrides, table, _ = ace_run
    name = str(table.loc[table["round"] == 0, "name"].iloc[0])
    with_ace = load_config(None, overrides + [f"concepts_for_tcav=[all,{name}]"])
    cavs_step(rd.RunDir(with_ace), ROUNDS, log=quiet)
    run = rd.RunDir(with_ace)
    for r in ROUNDS:
        stored = np.load(run.cav_file(r, "layer3"))
        concepts = list(stored["concepts"])
        assert concepts[-1] == name and concepts[:-1] == [c for c in concepts[:-1] if not c.startswith("ace:")]
        vectors = stored["cavs"][-1]
        assert np.allclose(np.linalg.norm(vectors[np.isfinite(vectors).all(1)], axis=1), 1, atol=1e-6)
    scores = tcav_step(rd.RunDir(with_ace), CPU, ROUNDS, log=quiet)
    mine = scores[scores["concept"] == name]
    assert set(mine["round"]) == set(ROUNDS) and len(mine) == len(ROUNDS) * 4  # every class scores it
    stamp = run.cav_file(2, "layer3").stat().st_mtime_ns
    cavs_step(rd.RunDir(with_ace), ROUNDS, log=quiet)  # complete: skipped
    assert run.cav_file(2, "layer3").stat().st_mtime_ns == stamp
    wrong = load_config(None, overrides + ["concepts_for_tcav=[ace:Nobody:0]"])
    with pytest.raises(UserError, match="not among round 0's ACE concepts"):
        cavs_step(rd.RunDir(wrong), ROUNDS, log=quiet)


def test_notebook_05_executes_with_ace_outputs(ace_run, monkeypatch):
    _, overrides, *_ = ace_run
    monkeypatch.setenv("LOTTERY_XAI_SET", " ".join(overrides))
    nb = nbformat.read(ROOT / "iPython" / "05_discovered_concepts.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # montages, similarity, PCA, histograms, occlusion masks


def _paired_p(concept: np.ndarray, random: np.ndarray) -> float:
    """amiratag/ACE's do_statistical_testings written out: ttest_rel of the first min(len) runs (pairs with
    a NaN dropped, a run whose CAV could not be fitted); NaN where scipy has no answer (constant)."""
    m = min(len(concept), len(random))
    a, b = concept[:m], random[:m]
    keep = ~(np.isnan(a) | np.isnan(b))
    return float(stats.ttest_rel(a[keep], b[keep]).pvalue)


def test_reference_protocol_by_default(ace_run):
    """ace.protocol: reference: random sets of train images (step 3's activations, none of them one of the
    class's discovery images), one more random set as ACE's random_discovery, concept run i paired with
    random run i by ttest_rel, kept at p <= 0.01 with no correction; the table says which protocol."""
    cfg, _, table, _ = ace_run
    run = rd.RunDir(cfg)
    assert (table["protocol"] == "reference").all()
    index = np.load(run.ace_patches())
    ids = np.load(run.activation_meta(0, "train", "ids"))
    checked = 0
    for r in ROUNDS:
        cavs = np.load(run.ace_cavs(r))
        assert str(cavs["random_source"]) == "images" and str(cavs["protocol"]) == "reference"
        assert cavs["random_sets"].shape[1] == cfg.ace.n_random
        for c, sets, extra in zip(cavs["class_index"], cavs["random_sets"], cavs["random_counterpart"]):
            discovery = set(index["image_ids"][index["image_class"] == c].tolist())
            for rows in (*sets, extra):
                assert len(rows) == cfg.ace.max_patches and (rows >= 0).all()
                assert not discovery & set(ids[rows].tolist())  # random images, never the class's own
        rows = table[table["round"] == r]
        for i, (c, k) in enumerate(zip(cavs["concept_class"], cavs["concept_id"])):
            row = rows[(rows["class"] == str(index["class_names"][c])) & (rows["concept"] == k)].iloc[0]
            p = _paired_p(cavs["tcav"][i], cavs["random_tcav"][list(cavs["class_index"]).index(c)])
            if np.isfinite(p):
                assert row["p_value"] == pytest.approx(p, rel=1e-9, abs=1e-12)
                assert bool(row["significant"]) == (p <= 0.01)
                checked += 1
    assert checked > 0


def test_strict_protocol_redoes_the_round_with_ours(ace_run, tmp_path):
    """ace.protocol: strict is part of the round's settings, so the round is redone (its patch activations
    reused): random patches of other classes, Welch's test and Bonferroni over the class's concepts."""
    import shutil

    cfg, overrides, _, _ = ace_run
    shutil.copytree(cfg.logs, tmp_path / "logs")
    strict = load_config(None, overrides + [f"logs={tmp_path / 'logs'}", "ace.protocol=strict"])
    run = rd.RunDir(strict)
    acts_stamp = run.ace_patch_activations(0).stat().st_mtime_ns
    table = ace_step(rd.RunDir(strict), CPU, [0], log=quiet)
    assert run.ace_patch_activations(0).stat().st_mtime_ns == acts_stamp
    cavs = np.load(run.ace_cavs(0))
    assert str(cavs["random_source"]) == "patches" and str(cavs["protocol"]) == "strict"
    index = np.load(run.ace_patches())
    for c, sets in zip(cavs["class_index"], cavs["random_sets"]):
        assert (index["patch_class"][sets] != c).all()  # patches of the other classes' images
    dense = table[table["round"] == 0]
    assert len(dense) > 0 and (dense["protocol"] == "strict").all()
    assert (table.loc[table["round"] == 2, "protocol"] == "reference").all()  # round 2 was not asked for
    checked = 0
    for i, (c, k) in enumerate(zip(cavs["concept_class"], cavs["concept_id"])):
        name = str(index["class_names"][c])
        row = dense[(dense["class"] == name) & (dense["concept"] == k)].iloc[0]
        concept = cavs["tcav"][i][~np.isnan(cavs["tcav"][i])]
        random = cavs["random_tcav"][list(cavs["class_index"]).index(c)]
        p = stats.ttest_ind(concept, random[~np.isnan(random)], equal_var=False).pvalue
        if np.isfinite(p):
            assert row["p_value"] == pytest.approx(p, rel=1e-9, abs=1e-12)
            assert bool(row["significant"]) == (p < strict.tcav.alpha / (dense["class"] == name).sum())
            checked += 1
    assert checked > 0


def test_a_table_of_an_older_version_is_dropped(tmp_path):
    """ace/concepts.csv without today's columns (no protocol column: written before ace.protocol) is removed
    before the rounds are discovered again; a table with every column stays."""
    from lottery_xai.pipeline.ace import CONCEPT_COLUMNS, _drop_older_table

    run = rd.RunDir(load_config(None, [f"logs={tmp_path}"]))
    path = run.ace_concepts()
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns=[c for c in CONCEPT_COLUMNS if c != "protocol"]).to_csv(path, index=False)
    said = []
    _drop_older_table(run, said.append)
    assert not path.exists() and "protocol" in said[0]
    pd.DataFrame(columns=CONCEPT_COLUMNS).to_csv(path, index=False)
    _drop_older_table(run, said.append)
    assert path.exists() and len(said) == 1
