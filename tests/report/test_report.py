"""The run report: every section, nothing external, missing parts as notes, replicates read, a real browser."""
import base64
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from lottery_xai import rundir as rd
from lottery_xai.config import load_config
from lottery_xai.pipeline.aggregate import BAND_COLUMNS
from lottery_xai.pipeline.sanity import sanity_step
from lottery_xai.report import build_report, plot_sanity, render_report
from lottery_xai.report.html import checkpoint_checksums
from lottery_xai.safe_io import fingerprint, save_csv

from conftest import browser_screenshot, not_blank

SECTIONS = ("verdicts", "provenance", "accuracy", "tcav", "maps", "metrics", "null-bands", "sanity")
quiet = lambda *_: None  # noqa: E731


class Page(HTMLParser):
    """Every tag's attributes, the section ids and the text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.attrs, self.ids, self.text = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attrs.append((tag, attrs))
        if tag == "section":
            self.ids.append(attrs["id"])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())

    def images(self) -> list[str]:
        return [a["src"] for tag, a in self.attrs if tag == "img"]


@pytest.fixture(scope="module")
def reported(sanity_run):
    cfg = load_config(None, sanity_run + ["sanity.methods=[gradcam,random]", "human_study.url_prefix=<b>x</b>"])
    sanity_step(rd.RunDir(cfg), torch.device("cpu"), log=quiet)
    plot_sanity(rd.RunDir(cfg))
    return cfg, build_report(rd.RunDir(cfg), log=quiet)


def test_the_report_holds_every_section_and_nothing_external(reported):
    cfg, path = reported
    text = path.read_text()
    page = Page(text)
    assert page.ids == list(SECTIONS)
    for tag, attrs in page.attrs:
        assert tag not in ("script", "link", "iframe", "object", "embed")
        assert attrs.get("href", "#").startswith("#"), attrs
        assert "src" not in attrs or attrs["src"].startswith("data:image/png;base64,"), tag
    images = page.images()
    assert len(images) >= 8  # accuracy, three map grids, metric figures, the sanity figures
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    plain = page.plain
    # the numbers of the run: checkpoint checksums, every method's metric table, the sanity verdicts
    run = rd.RunDir(cfg)
    for r in (0, 1, 2):
        assert fingerprint(run.checkpoint(r, "best")) in plain
    assert checkpoint_checksums(run)[2][3] == fingerprint(run.checkpoint(2, "best"))
    assert "git commit" in plain and "torch" in text and "statsmodels" in text
    verdicts = pd.read_csv(run.sanity_verdicts())
    assert f"{verdicts['similarity'].iloc[0]:.3f}" in plain
    assert "gradcam: faithfulness (deletion AUC) changes by" in plain
    assert "sanity check passed: its maps change when the weights are randomised" in plain
    assert "as expected of the negative control" in plain
    assert "saliency" in plain and "sanity check: not computed for this method" in plain
    # intervals and tests of step 7, escaped text, the replicates' note
    metrics = pd.read_csv(run.explanation_metrics())
    row = metrics[(metrics["method"] == "gradcam") & (metrics["metric"] == "deletion_auc") & (metrics["round"] == 2)].iloc[0]
    assert f"{row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" in plain
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
    assert "Null bands not computed: run bash bash_script/run_seeds.sh" in plain
    assert run.sanity_figure("sanity_checks").is_file() and run.sanity_figure("sanity_maps_round_02").is_file()
    # the default verdict in words, and the controls that sanity.controls adds to the methods asked for
    assert "SSIM >= 0.5 once the upper half of the blocks is random, from the logits down" in plain
    assert "Positive controls: guided backprop and guided Grad-CAM" in plain
    assert {"guided_backprop", "guided_gradcam", "smoothgrad"} <= set(verdicts["method"])


def test_the_sanity_figure_marks_the_verdicts_threshold_and_stage(reported):
    """The cascade's figure of the verdict's measure draws the threshold (0.5) and the stage it reads: 3 of the
    small ResNet's 7 blocks (fc, layer4, layer3), each method in its own colour and the control grey."""
    from matplotlib.colors import to_hex

    from lottery_xai.report.sanity import sanity_figures, sanity_tables

    cfg, _ = reported
    run = rd.RunDir(cfg)
    summary = sanity_tables(run)[1]
    figure = sanity_figures(run, summary[summary["measure"] == "ssim"])[0][0]
    ax = figure.axes[0]
    straight = [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in ax.lines
                if line.get_linestyle() == ":"]
    assert ((0, 1), (0.5, 0.5)) in straight and ((3, 3), (0, 1)) in straight
    legend = {t.get_text(): to_hex(h.lines[0].get_color() if hasattr(h, "lines") else h.get_color())
              for t, h in zip(figure.axes[-1].get_legend().get_texts(), figure.axes[-1].get_legend().legend_handles)}
    assert legend["random (control)"] == "#808080"
    methods = [c for m, c in legend.items() if m != "random (control)"]
    assert len(set(methods)) == len(methods) and "#7f7f7f" not in methods


def test_a_rerun_skips_an_up_to_date_report(reported):
    cfg, path = reported
    stamp = path.stat().st_mtime_ns
    assert build_report(rd.RunDir(cfg), log=quiet) == path and path.stat().st_mtime_ns == stamp
    build_report(rd.RunDir(cfg), force=True, log=quiet)
    assert path.stat().st_mtime_ns != stamp
    assert not list(path.parent.glob(".*.tmp"))


def test_missing_parts_are_notes(reported, tmp_path):
    cfg, _ = reported
    run = rd.RunDir(cfg)
    bare = load_config(None, [f"logs={tmp_path}", f"data_root={cfg.data_root}", f"json_root={cfg.json_root}",
                              "img_size=32", "prune_iterations=2", "prune_percent=50", "device=cpu"])
    target = rd.RunDir(bare)
    assert target.name == run.name
    shutil.copytree(run.pruning_dir, target.pruning_dir)
    plain = Page(render_report(target)).plain
    assert "Test accuracy not computed: run step 2 (main_lth_test.py)" in plain
    for note in ("TCAV not computed: run step 5", "Attribution maps not computed: run step 6",
                 "Explanation metrics not computed: run step 7", "Null bands not computed",
                 "Sanity checks not computed: run main_sanity_checks.py"):
        assert note in plain
    with pytest.raises(Exception, match="main_lth_pruning.py"):
        build_report(rd.RunDir(load_config(None, [f"logs={tmp_path / 'none'}"])), log=quiet)


def test_the_replicates_null_bands_reach_the_table_and_the_verdict(reported, tmp_path):
    cfg, _ = reported
    run = rd.RunDir(cfg)
    seeds = [0, 1]
    rows = []
    for method in ("gradcam", "random"):
        for r, w in ((1, 0.5), (2, 0.25)):
            rows.append({"round": r, "weights_remaining": w, "method": method, "metric": "spearman",
                         "seed_mean": 0.8, "seed_ci_low": 0.7, "seed_ci_high": 0.9, "seed_n_pairs": 1,
                         "random_mean": 0.4, "random_ci_low": 0.3, "random_ci_high": 0.5, "random_n": 8,
                         "ticket_mean": 0.75, "ticket_ci_low": 0.7, "ticket_ci_high": 0.8,
                         "within_seed_band": method == "gradcam"})
    folder = run.aggregate_file(seeds, "null_bands")
    save_csv(folder, pd.DataFrame(rows, columns=BAND_COLUMNS))
    save_csv(run.aggregate_file(seeds, "accuracy"), pd.DataFrame(
        [{"run": "ticket", "round": 0, "weights_remaining": 1.0, "mean": 0.9, "ci_low": 0.85, "ci_high": 0.95,
          "n_seeds": 2}]))
    try:
        plain = Page(render_report(run)).plain
    finally:
        shutil.rmtree(run.aggregate_dir(seeds))
    assert "Replicates: seeds 0, 1 (mean [CI])" in plain
    assert "0.800 [0.700, 0.900]" in plain and "0.400 [0.300, 0.500]" in plain
    assert "90.00 [85.00, 95.00]" in plain
    gradcam = plain.split("gradcam:")[1].split("random:")[0]
    assert "within the seed-to-seed band: yes (band 0.800 [0.700, 0.900])" in gradcam
    assert "within the seed-to-seed band: no" in plain.split("random:")[1]


def test_the_report_opens_in_a_browser_with_its_figures(reported, tmp_path):
    _, path = reported
    shot = browser_screenshot(path, tmp_path / "report.png", tmp_path, 1200, 1600)
    assert shot.shape[:2] == (1600, 1200) and not_blank(shot)
    # every embedded figure decodes in the browser: the images alone, each in a fixed cell of a grid
    images = Page(path.read_text()).images()
    width, height, per_row = 160, 120, 6
    cells = "".join(f'<img alt="" src="{src}" style="position:absolute;left:{(i % per_row) * width}px;'
                    f'top:{(i // per_row) * height}px;width:{width - 10}px;height:{height - 10}px">'
                    for i, src in enumerate(images))
    grid = tmp_path / "figures.html"
    grid.write_text(f'<!DOCTYPE html><html><body style="margin:0;background:#fff">{cells}</body></html>')
    rows = -(-len(images) // per_row)
    shot = browser_screenshot(grid, tmp_path / "figures.png", tmp_path, width * per_row, height * rows + 20)
    for i in range(len(images)):
        y, x = (i // per_row) * height, (i % per_row) * width
        cell = shot[y:y + height - 10, x:x + width - 10].astype(np.float32)
        assert cell.std() > 5, f"figure {i} did not render"


def test_a_method_whose_maps_ignore_the_weights_is_flagged(reported, monkeypatch):
    from lottery_xai.pipeline.sanity import NO_CHANGE
    from lottery_xai.report import verdicts as report_verdicts

    cfg, _ = reported
    run = rd.RunDir(cfg)
    verdicts, summary = report_verdicts.sanity_tables(run)
    fake = verdicts.copy()
    fake.loc[(fake["method"] == "gradcam") & (fake["round"] == 2), ["similarity", "verdict"]] = [0.93, NO_CHANGE]
    monkeypatch.setattr(report_verdicts, "sanity_tables", lambda _: (fake, summary))
    items = {item["method"]: item for item in report_verdicts.method_verdicts(run, None)}
    assert items["gradcam"]["cls"] == "bad" and items["random"]["cls"] == ""
    assert "sanity check FAILED at round 2: its maps do not change" in items["gradcam"]["text"]
    assert "0.93 at round 2" in items["gradcam"]["text"]
    assert set(items) == {"gradcam", "saliency", "random"}  # the TCAV rows of step 7 are not a method


@pytest.mark.parametrize("script", ["main_report.py", "main_sanity_checks.py"])
def test_the_scripts_before_step_1_exit_with_one_line(script, tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    from conftest import ROOT

    monkeypatch.setattr(sys, "argv", [script, "--set", f"logs={tmp_path}", "--device", "cpu"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "main_lth_pruning.py" in err[0]
