"""The report opens with a compact verdict table (method x family of metrics: the change from the dense round, its
interval, the corrected significance, within the seed band), the sentences below it; on tables written by hand."""
import numpy as np
import pandas as pd

from lottery_xai.config import load_config
from lottery_xai.pipeline.aggregate import BAND_COLUMNS
from lottery_xai.report.page import replicate_seeds
from lottery_xai.report.verdicts import verdict_section
from lottery_xai.rundir import RunDir
from lottery_xai.safe_io import save_csv
from lottery_xai.stats.inference import TEST_COLUMNS


def _hand_written_run(tmp_path) -> RunDir:
    """gradcam at rounds 0 (dense) and 2 (25 % of the weights): deletion AUC 0.6 -> 0.4 with per-image values that
    all drop by 0.2, energy in the box 50 -> 45 without per-image values, Spearman with the dense map 0.8 [0.7, 0.9]
    at round 2; the paired tests and the replicates' seed band of two seeds."""
    run = RunDir(load_config(None, [f"logs={tmp_path}", "experiment_name=v", "stats.n_bootstrap=200"]))
    rows = [(0, 1.0, "deletion_auc", 0.6, np.nan, np.nan), (2, 0.25, "deletion_auc", 0.4, 0.35, 0.45),
            (0, 1.0, "energy_in_box", 50.0, 45.0, 55.0), (2, 0.25, "energy_in_box", 45.0, 40.0, 50.0),
            (0, 1.0, "spearman", 1.0, 1.0, 1.0), (2, 0.25, "spearman", 0.8, 0.7, 0.9)]
    save_csv(run.explanation_metrics(), pd.DataFrame(
        [{"round": r, "weights_remaining": w, "method": "gradcam", "metric": m, "value": v, "n_images": 3,
          "ci_low": lo, "ci_high": hi} for r, w, m, v, lo, hi in rows]))
    save_csv(run.explanation_per_image(), pd.DataFrame(
        [{"round": r, "method": "gradcam", "metric": "deletion_auc", "image_id": i, "value": v}
         for r, values in ((0, (0.5, 0.6, 0.7)), (2, (0.3, 0.4, 0.5))) for i, v in enumerate(values)]))
    save_csv(run.explanation_tests(), pd.DataFrame(
        [{"round": 2, "weights_remaining": 0.25, "method": "gradcam", "metric": m, "comparison": "dense", "n": 3,
          "statistic": 0.0, "p_value": p / 3, "p_adjusted": p, "significant": p < 0.05}
         for m, p in (("deletion_auc", 0.004), ("energy_in_box", 0.2))], columns=TEST_COLUMNS))
    band = dict.fromkeys(BAND_COLUMNS, 0.0) | {"round": 2, "weights_remaining": 0.25, "method": "gradcam",
                                                "metric": "spearman", "seed_mean": 0.85, "seed_ci_low": 0.8,
                                                "seed_ci_high": 0.9, "within_seed_band": True}
    save_csv(run.aggregate_file([0, 1], "null_bands"), pd.DataFrame([band], columns=BAND_COLUMNS))
    return run


def test_the_verdict_table_comes_first_with_the_numbers_of_each_family(tmp_path):
    run = _hand_written_run(tmp_path)
    seeds = replicate_seeds(run)
    assert seeds == [0, 1]
    section = verdict_section(run, seeds)
    table, sentences = section["blocks"]
    assert table["kind"] == "table" and sentences["kind"] == "sentences"
    assert table["columns"] == ["method", "family (metric)", "dense", "sparsest (25.0 % weights)",
                                "change from dense [interval]", "corrected p (dense vs sparsest)", "within the seed band"]
    rows = {row[1]: row for row in table["rows"]}
    # every image lost 0.2: the mean change and both ends of its bootstrap interval are -0.2
    assert rows["faithfulness (deletion AUC)"][:5] == ["gradcam", "faithfulness (deletion AUC)", "0.600", "0.400",
                                                       "-0.200 [-0.200, -0.200]"]
    assert rows["faithfulness (deletion AUC)"][5] == {"text": "0.004 (significant)", "cls": "bad"}
    assert rows["faithfulness (deletion AUC)"][6] == "–"  # no seed band for this metric
    # no per-image values: the change of the means, 45 - 50, without an interval
    assert rows["localisation (energy in the box, %)"][2:6] == [
        "50.000", "45.000", "-5.000", {"text": "0.200 (not significant)", "cls": ""}]
    # the similarity with the dense map: 0.8 - 1, its interval [0.7, 0.9] shifted by the dense value 1
    consistency = rows["consistency with the dense map (Spearman)"]
    assert consistency[2:6] == ["1.000", "0.800", "-0.200 [-0.300, -0.100]", "–"]
    assert consistency[6] == {"text": "yes", "cls": "good"}
    # the sentences below say the same numbers
    (entry,) = sentences["entries"]
    assert entry["method"] == "gradcam"
    assert ("faithfulness (deletion AUC) changes by -0.200 [-0.200, -0.200] from dense (0.600) to 25.0 % weights "
            "(0.400), a significant change (adjusted p = 0.004)") in entry["text"]
    assert "localisation (energy in the box, %) changes by -5.000 from dense (50.000)" in entry["text"]
    assert ("consistency with the dense map (Spearman) at 25.0 % weights is 0.800 [0.700, 0.900]; within the "
            "seed-to-seed band: yes (band 0.850 [0.800, 0.900])") in entry["text"]


def test_without_replicates_the_band_column_says_so(tmp_path):
    run = _hand_written_run(tmp_path)
    section = verdict_section(run, None)
    rows = {row[1]: row for row in section["blocks"][0]["rows"]}
    assert rows["consistency with the dense map (Spearman)"][6] == "no replicates"
    assert "within the seed-to-seed band: not computed (no replicates)" in section["blocks"][1]["entries"][0]["text"]
