"""The human study's pages, analysis tables and figures (``main_human_study.py``).

Pages: the Mechanical Turk layout of each experiment (HTML with ``${...}`` placeholders for the batch
columns) and a preview page that shows the first tasks with the local stimulus files, from the same
jinja2 templates (``report/templates/human_study_*.html.j2``).

Analysis: Mechanical Turk result files (``Input.*``, ``Answer.choice``, ``WorkerId``; rejected
assignments are left out) are joined with the export's answer key on ``item_id``, and the statistics
of :mod:`lottery_xai.stats.human` are computed per comparison (experiment 1) and per round
(experiment 2). Tables go to ``human_study/analysis/*.csv``, figures beside them.

The p-values, intervals and Holm adjustments (``p_value``, ``p_holm``, ``*_low``/``*_high``) respect that
answers cluster by task and by worker: experiment 1's share of decisive votes for the sparser round is
tested against 1/2 clustered two-way by task and worker; experiment 2 compares each round with the
reference round paired by image (the same images are shown at every round), clustered by image and
worker (:func:`lottery_xai.stats.human.clustered_share_test`, :func:`~lottery_xai.stats.human.paired_difference_test`).
The thesis's statistics stay as secondary columns named ``*_naive`` (chi-square tests that count every
answer as independent), and ``p_items`` (the chi-square of the tasks' majorities).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import jinja2

from ..errors import UserError
from ..pipeline.human_study import (ANSWER_FIELD, DONT_KNOW, STEP, class_names, display_name, export_label,
                                    export_stimuli, read_export, simulate_results)
from ..rundir import RunDir
from ..safe_io import read_csv, save_csv, write_text
from ..stats.human import (clustered_share_test, decisive_vote_test, items_needed, krippendorff_alpha,
                           paired_difference_test, recognition_test, study_power, workers_needed)
from ..steps import step
from .figures import plt, save_figure

TEMPLATES = Path(__file__).resolve().parent / "templates"
EXPERIMENT1_COLUMNS = [
    "round_a", "round_b", "weights_a", "weights_b", "n_items", "n_answers", "n_workers", "votes_a", "votes_b",
    "votes_equal", "share_equal", "share_b", "share_b_low", "share_b_high", "statistic", "df", "p_value", "p_holm",
    "alpha", "chi2_naive", "p_naive", "items_a", "items_b", "p_items"]
EXPERIMENT2_COLUMNS = [
    "round", "weights_remaining", "n_items", "n_answers", "n_workers", "n_correct", "n_dont_know", "accuracy",
    "accuracy_low", "accuracy_high", "share_dont_know", "reference_round", "n_paired_images", "difference",
    "difference_low", "difference_high", "statistic", "df", "p_value", "p_holm", "alpha", "chi2_naive", "p_naive"]
PER_CLASS_COLUMNS = ["round", "weights_remaining", "class", "n_answers", "n_correct", "n_dont_know", "accuracy"]


# ---------------------------------------------------------------- pages

def _environment():
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _common(run: RunDir) -> dict:
    h = run.cfg.human_study
    names = class_names(run)
    return {"field": ANSWER_FIELD, "dont_know": DONT_KNOW, "size": h.display_size or run.cfg.img_size,
            "top_percent": f"{100 * h.top_fraction:g}", "classes": [(n, display_name(n)) for n in names]}


def write_task_pages(run: RunDir, log=print) -> list[Path]:
    """The two Mechanical Turk layouts and the preview page of the last export."""
    env, common = _environment(), _common(run)
    written = []
    for experiment in (1, 2):
        html = env.get_template("human_study_layout.html.j2").render(experiment=experiment, **common)
        write_text(run.human_study_layout(experiment), html)
        written.append(run.human_study_layout(experiment))
    shown, n_tasks = {}, {}
    for experiment in (1, 2):
        batch, key = read_export(run, experiment)
        n_tasks[experiment] = len(batch)
        first = batch.head(run.cfg.human_study.preview_items).merge(key, on="item_id")
        files = first["left_file" if experiment == 1 else "file"]
        if experiment == 1:  # the preview sits beside stimuli/: local relative paths, whatever url_prefix is
            first["left_url"] = [f"stimuli/{f}" for f in first["left_file"]]
            first["right_url"] = [f"stimuli/{f}" for f in first["right_file"]]
        else:
            first["image_url"] = [f"stimuli/{f}" for f in files]
            first["class_name"] = first["class"].map(display_name)
        shown[experiment] = first.to_dict("records")
    rounds = sorted(set(read_export(run, 2)[1]["round"].tolist()))
    html = env.get_template("human_study_preview.html.j2").render(
        experiment1=shown[1], experiment2=shown[2], n_shown={e: len(shown[e]) for e in shown}, n_tasks=n_tasks,
        rounds=rounds, run_name=run.name, **common)
    write_text(run.human_study_preview(), html)
    written.append(run.human_study_preview())
    log(f"human study: layouts and preview in {run.human_study_dir} (open {run.human_study_preview().name})")
    return written


# ---------------------------------------------------------------- reading result files

def _answers(frame: pd.DataFrame, path) -> pd.Series:
    """The ``choice`` answer of every row: ``Answer.choice`` (a plain radio group), or the one true column
    of ``Answer.choice.<value>`` (crowd-radio-button's format)."""
    column = f"Answer.{ANSWER_FIELD}"
    if column in frame.columns:
        return frame[column].astype(str).str.strip()
    onehot = [c for c in frame.columns if c.startswith(column + ".")]
    if not onehot:
        raise UserError(f"'{path}' has no column {column} (or {column}.<value>); is it a Mechanical Turk result "
                        "file of a main_human_study.py export?")
    values = np.array([c[len(column) + 1:] for c in onehot], dtype=object)
    flags = frame[onehot].astype(str).apply(lambda s: s.str.strip().str.lower().isin(["true", "1", "yes", "on"]))
    if not (flags.sum(axis=1) == 1).all():
        bad = int(np.flatnonzero(flags.sum(axis=1).to_numpy() != 1)[0])
        raise UserError(f"'{path}' row {bad + 2} has {int(flags.iloc[bad].sum())} answers in the {column}.* columns; "
                        "each assignment needs exactly one")
    return pd.Series(values[flags.to_numpy().argmax(axis=1)], index=frame.index)


def read_results(paths: list[str | Path], log=print) -> pd.DataFrame:
    """Every accepted assignment of the result files: ``item_id, worker, answer`` (+ the file's ``Input.*``)."""
    frames = []
    for path in paths:
        frame = read_csv(path, ["WorkerId", "Input.item_id"])
        if "AssignmentStatus" in frame.columns:
            rejected = frame["AssignmentStatus"].astype(str).str.lower() == "rejected"
            if rejected.any():
                log(f"human study: {int(rejected.sum())} rejected assignments in '{path}' are left out")
            frame = frame.loc[~rejected]
        out = pd.DataFrame({"item_id": frame["Input.item_id"].astype(str), "worker": frame["WorkerId"].astype(str),
                            "answer": _answers(frame, path), "file": str(path)})
        for column in ("left_url", "right_url", "image_url"):
            if f"Input.{column}" in frame.columns:
                out[column] = frame[f"Input.{column}"].astype(str)
        frames.append(out)
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["item_id", "worker", "answer"])
    twice = results.duplicated(["item_id", "worker"])
    if twice.any():
        log(f"human study: {int(twice.sum())} repeated answers of a worker to a task are left out (first kept)")
        results = results.loc[~twice]
    return results


def _join(results: pd.DataFrame, key: pd.DataFrame, experiment: int, batch: pd.DataFrame) -> pd.DataFrame:
    joined = results.merge(key, on="item_id", how="inner")
    urls = ["left_url", "right_url"] if experiment == 1 else ["image_url"]
    present = [u for u in urls if u in joined.columns]
    if present:  # the images a worker saw must be the ones the key describes (results of this export)
        expected = joined[["item_id"]].merge(batch[["item_id", *present]], on="item_id", suffixes=("", ""))
        mismatch = (joined[present].to_numpy() != expected[present].to_numpy()).any(axis=1)
        if mismatch.any():
            row = joined.loc[mismatch].iloc[0]
            raise UserError(f"task {row['item_id']} in '{row['file']}' showed other images than this export's batch "
                            f"file ({export_label()} was rerun since?); analyse it against the export it was made from")
    return joined


# ---------------------------------------------------------------- the analysis

def _holm(p_values: pd.Series) -> np.ndarray:
    from statsmodels.stats.multitest import multipletests  # lazy: statsmodels (0.3 s), only the analysis needs it

    values = p_values.to_numpy(dtype=float)
    out = np.full(len(values), np.nan)
    ok = ~np.isnan(values)
    if ok.any():
        out[ok] = multipletests(values[ok], method="holm")[1]
    return out


def experiment1_table(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per compared pair of rounds (a denser than b): the votes for each round and "equal"; the
    share of the decisive votes for b with its interval and the t-test against 1/2, clustered by task and
    by worker (Holm-adjusted over the comparisons too); Krippendorff's alpha. Secondary: the thesis's
    chi-square of the pooled decisive votes (``chi2_naive``, ``p_naive``: every vote counted as
    independent) and the chi-square of the tasks' majorities (``items_a``, ``items_b``, ``p_items``)."""
    bad = sorted(set(answers["answer"]) - {"left", "right", "equal"})
    if bad:
        raise UserError(f"experiment 1 answers must be left, right or equal; found {bad[:3]} in "
                        f"'{answers.loc[answers['answer'] == bad[0], 'file'].iloc[0]}'")
    rounds = np.where(answers["answer"] == "left", answers["left_round"],
                      np.where(answers["answer"] == "right", answers["right_round"], -1))
    answers = answers.assign(vote=np.where(rounds == -1, "equal", np.where(rounds == answers["round_a"], "a", "b")))
    rows = []
    for (a, b), group in answers.groupby(["round_a", "round_b"], sort=True):
        counts = group["vote"].value_counts()
        votes_a, votes_b, equal = (int(counts.get(v, 0)) for v in ("a", "b", "equal"))
        chi2, p = decisive_vote_test(votes_a, votes_b)
        per_item = group.pivot_table(index="item_id", columns="vote", aggfunc="size", fill_value=0)
        item_a = per_item.get("a", pd.Series(0, index=per_item.index))
        item_b = per_item.get("b", pd.Series(0, index=per_item.index))
        items_a, items_b = int((item_a > item_b).sum()), int((item_b > item_a).sum())
        decisive = group[group["vote"] != "equal"]
        test = clustered_share_test((decisive["vote"] == "b").to_numpy(), [decisive["item_id"], decisive["worker"]])
        rows.append({"round_a": int(a), "round_b": int(b), "weights_a": float(group["weights_a"].iloc[0]),
                     "weights_b": float(group["weights_b"].iloc[0]), "n_items": int(group["item_id"].nunique()),
                     "n_answers": len(group), "n_workers": int(group["worker"].nunique()), "votes_a": votes_a,
                     "votes_b": votes_b, "votes_equal": equal, "share_equal": equal / len(group),
                     "share_b": test.estimate, "share_b_low": test.low, "share_b_high": test.high,
                     "statistic": test.statistic, "df": test.df, "p_value": test.p_value,
                     "alpha": krippendorff_alpha(group["item_id"], group["vote"], ["a", "b", "equal"]),
                     "chi2_naive": chi2, "p_naive": p, "items_a": items_a, "items_b": items_b,
                     "p_items": decisive_vote_test(items_a, items_b)[1]})
    table = pd.DataFrame(rows, columns=EXPERIMENT1_COLUMNS)
    table["p_holm"] = _holm(table["p_value"])
    return table


def experiment2_tables(answers: pd.DataFrame, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per round: answers, correct ("don't know" is not correct), "don't know", accuracy with its interval
    (clustered by image and worker); against the densest round, paired by image: the accuracy
    difference, its interval and t-test (clustered by image, which pairs the rounds, and by worker;
    Holm-adjusted over the rounds); Krippendorff's alpha of the answers; and accuracy per round and
    class. Secondary: the 2x2 chi-square of the two rounds' pooled counts (``chi2_naive``, ``p_naive``:
    unpaired, every answer counted as independent)."""
    allowed = set(names) | {DONT_KNOW}
    bad = sorted(set(answers["answer"]) - allowed)
    if bad:
        raise UserError(f"experiment 2 answer {bad[0]!r} in '{answers.loc[answers['answer'] == bad[0], 'file'].iloc[0]}' "
                        f"is neither a class of the export nor {DONT_KNOW}")
    answers = answers.assign(correct=answers["answer"] == answers["class"], dont_know=answers["answer"] == DONT_KNOW)
    reference = int(answers["round"].min())
    ref = answers[answers["round"] == reference]
    rows = []
    for r, group in answers.groupby("round", sort=True):
        n, k = len(group), int(group["correct"].sum())
        accuracy = clustered_share_test(group["correct"].to_numpy(), [group["image_id"], group["worker"]])
        row = {"round": int(r), "weights_remaining": float(group["weights_remaining"].iloc[0]),
               "n_items": int(group["item_id"].nunique()), "n_answers": n,
               "n_workers": int(group["worker"].nunique()), "n_correct": k,
               "n_dont_know": int(group["dont_know"].sum()), "accuracy": k / n, "accuracy_low": accuracy.low,
               "accuracy_high": accuracy.high, "share_dont_know": float(group["dont_know"].mean()),
               "reference_round": reference,
               "alpha": krippendorff_alpha(group["item_id"], group["answer"], [*names, DONT_KNOW])}
        if r != reference:
            paired = set(group["image_id"]) & set(ref["image_id"])
            both = pd.concat([ref, group])
            both = both[both["image_id"].isin(paired)]
            test = paired_difference_test(both["correct"].to_numpy(), (both["round"] == r).to_numpy(),
                                          [both["image_id"], both["worker"]])
            chi2, p = recognition_test(k, n, int(ref["correct"].sum()), len(ref))
            row.update({"n_paired_images": len(paired), "difference": test.estimate, "difference_low": test.low,
                        "difference_high": test.high, "statistic": test.statistic, "df": test.df,
                        "p_value": test.p_value, "chi2_naive": chi2, "p_naive": p})
        rows.append(row)
    table = pd.DataFrame(rows, columns=EXPERIMENT2_COLUMNS)
    table["p_holm"] = _holm(table["p_value"])
    per_class = (answers.groupby(["round", "class"], sort=True)
                 .agg(weights_remaining=("weights_remaining", "first"), n_answers=("correct", "size"),
                      n_correct=("correct", "sum"), n_dont_know=("dont_know", "sum"))
                 .reset_index())
    per_class["accuracy"] = per_class["n_correct"] / per_class["n_answers"]
    return table, per_class[PER_CLASS_COLUMNS]


def analyse(run: RunDir, paths: list[str | Path], draw: bool = True, log=print) -> dict[str, pd.DataFrame]:
    """Analyse Mechanical Turk result files of the last export (either experiment, or both, in any files):
    writes ``human_study/analysis/{experiment1, experiment2, experiment2_per_class}.csv`` and figures."""
    results = read_results(paths, log)
    batch1, key1 = read_export(run, 1)
    batch2, key2 = read_export(run, 2)
    unknown = sorted(set(results["item_id"]) - set(key1["item_id"]) - set(key2["item_id"]))
    if unknown:
        where = results.loc[results["item_id"] == unknown[0], "file"].iloc[0]
        raise UserError(f"task {unknown[0]!r} in '{where}' is not in this export's answer keys "
                        f"({len(unknown)} unknown tasks); analyse the results against the run they were exported from")
    tables = {}
    first = results[results["item_id"].isin(key1["item_id"])]
    if len(first):
        tables["experiment1"] = experiment1_table(_join(first, key1, 1, batch1))
    second = results[results["item_id"].isin(key2["item_id"])]
    if len(second):
        tables["experiment2"], tables["experiment2_per_class"] = experiment2_tables(_join(second, key2, 2, batch2),
                                                                                     class_names(run))
    if not tables:
        raise UserError(f"no answers in {', '.join(map(str, paths))}")
    for name, table in tables.items():
        save_csv(run.human_study_table(name), table)
    if draw:
        if "experiment1" in tables:
            preference_figure(tables["experiment1"], run.human_study_figure("experiment1"))
        if "experiment2" in tables:
            recognition_figure(tables["experiment2"], run.human_study_figure("experiment2"))
    log(f"human study: analysis of {len(results)} answers in {run.human_study_dir / 'analysis'}")
    return tables


# ---------------------------------------------------------------- figures

def _stars(p: float) -> str:
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "n.s."


def preference_figure(table: pd.DataFrame, path: Path | None = None):
    """Experiment 1: for each comparison, the shares of answers for the denser round, "equal" and the
    sparser round, with the p-value of the decisive votes."""
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.7 * len(table)))
    labels = [f"round {int(r.round_a)} ({100 * r.weights_a:.3g} %)\nvs round {int(r.round_b)} ({100 * r.weights_b:.3g} %)"
              for r in table.itertuples()]
    total = (table["votes_a"] + table["votes_b"] + table["votes_equal"]).to_numpy(dtype=float)
    parts = [("votes_a", "denser round", "#4477aa"), ("votes_equal", "equal", "#bbbbbb"),
             ("votes_b", "sparser round", "#ee6677")]
    left = np.zeros(len(table))
    y = np.arange(len(table))
    for column, label, colour in parts:
        share = table[column].to_numpy(dtype=float) / total
        ax.barh(y, share, left=left, color=colour, label=label, height=0.6)
        left += share
    for i, row in enumerate(table.itertuples()):
        ax.text(1.01, i, f"p = {row.p_value:.2g} {_stars(row.p_value)}", va="center", fontsize=9)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="black", lw=0.6, ls=":")
    ax.set_xlabel("share of answers")
    ax.set_title("Which explanation is more reasonable? (share of the decisive votes vs 1/2, t-test clustered by "
                 "task and worker)", fontsize=9)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=3, fontsize=8, frameon=False)
    return save_figure(fig, path)


def recognition_figure(table: pd.DataFrame, path: Path | None = None):
    """Experiment 2: accuracy per round (95 % interval clustered by image and worker), the share of "don't
    know", and the stars of the paired test against the reference round."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(table))
    acc = table["accuracy"].to_numpy(dtype=float)
    err = np.vstack([acc - table["accuracy_low"].to_numpy(dtype=float), table["accuracy_high"].to_numpy(dtype=float) - acc])
    err = np.clip(np.nan_to_num(err), 0.0, None)  # at 0 % or 100 % the Wilson bound equals the rate up to rounding
    ax.bar(x - 0.18, acc, width=0.36, yerr=err, capsize=3, color="#4477aa", label="correct")
    ax.bar(x + 0.18, table["share_dont_know"], width=0.36, color="#bbbbbb", label="don't know")
    for i, row in enumerate(table.itertuples()):
        if np.isfinite(row.p_value):
            ax.text(i - 0.18, min(row.accuracy_high + 0.02, 1.02), _stars(row.p_value), ha="center", fontsize=9)
    ax.set_xticks(x)
    ax.set_xticklabels([f"round {int(r.round)}\n{100 * r.weights_remaining:.3g} %" for r in table.itertuples()], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("share of answers")
    ax.set_title("Class recognised from the top of the map (vs the dense round, paired by image,\n"
                 "clustered by image and worker)", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, path)



# ---------------------------------------------------------------- what main_human_study.py runs

def parse_accuracy(text: str, rounds: list[int]) -> float | dict[int, float]:
    """``--accuracy``: one value for every round, or one per exported round (``0.86,0.86,0.81``)."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--accuracy expects numbers, got '{text}'") from None
    if len(values) == 1:
        return values[0]
    if len(values) != len(rounds):
        raise UserError(f"--accuracy gives {len(values)} values for the {len(rounds)} exported rounds {rounds}")
    return dict(zip(rounds, values))


def simulate_and_plan(run: RunDir, *, preference: float, equal_share: float, agreement: float,
                      accuracy: str, dont_know: float, workers: int = 0, seed: int | None = None,
                      log=print) -> dict[int, str]:
    """``main_human_study.py simulate``: result files drawn from the last export, then the power of one
    comparison of experiment 1 with this export's items and how many workers or items 80 % power needs."""
    key = read_export(run, 2)[1]
    rounds = sorted(set(key["round"].tolist()))
    workers = workers or run.cfg.human_study.workers_per_item
    written = simulate_results(run, preference=preference, equal_share=equal_share, agreement=agreement,
                               accuracy=parse_accuracy(accuracy, rounds), dont_know=dont_know, workers=workers,
                               seed=seed, log=log)
    items = int(key["image_id"].nunique())
    power = study_power(preference, items, workers, equal_share, agreement)
    need = workers_needed(preference, items, equal_share, agreement)
    log(f"power of one comparison ({items} items, {workers} workers each, preference {preference:g}, "
        f"{equal_share:g} equal, agreement {agreement:g}, alpha 0.05): {power:.2f}")
    log(f"workers per item for 80 % power with these {items} items: {need if need else 'none suffice: add items'}; "
        f"items for 80 % power with {workers} workers: "
        f"{items_needed(preference, workers, equal_share, agreement) if preference != 0.5 else 'n/a'}")
    return written


def print_tables(tables: dict[str, pd.DataFrame], log=print) -> None:
    """The analysis tables on the terminal (the per-class table only in its file)."""
    for name, table in tables.items():
        if name != "experiment2_per_class":
            log(f"\n{name}:\n{table.to_string(index=False, float_format=lambda v: f'{v:.4g}')}")


# ---------------------------------------------------------------- the step (main_human_study.py)

def _arguments(parser) -> None:
    parser.add_argument("command", choices=["export", "analyse", "simulate"], help="what to do")
    parser.add_argument("results", nargs="*", help="analyse: Mechanical Turk result files (.csv)")
    parser.add_argument("--preference", type=float, default=0.6,
                        help="simulate: share of decisive votes for the sparser round")
    parser.add_argument("--equal-share", type=float, default=0.2, help="simulate: share of 'equal' answers")
    parser.add_argument("--agreement", type=float, default=0.3, help="simulate: Krippendorff's alpha of the answers")
    parser.add_argument("--accuracy", default="0.85",
                        help="simulate: experiment 2 accuracy, one value or one per round (0.86,0.86,0.81)")
    parser.add_argument("--dont-know", type=float, default=0.05, help="simulate: share of \"don't know\" answers")
    parser.add_argument("--workers", type=int, default=0,
                        help="simulate: answers per task (default human_study.workers_per_item)")
    parser.add_argument("--seed", type=int, default=None, help="simulate: seed of the draws (default: the config's seed)")


@step(STEP, script="main_human_study.py", title="the human study of explanations: stimuli and Mechanical Turk files "
      "(export), the analysis of the answers (analyse), a simulator and the power of the design (simulate)",
      folder="human_study", needs=("pruning",), rounds="chosen", draws=True, arguments=_arguments,
      writes=("human_study/stimuli/*.png", "human_study/stimuli.csv", "human_study/experiment{1,2}_batch.csv",
              "human_study/experiment{1,2}_key.csv", "human_study/experiment{1,2}_layout.html",
              "human_study/preview.html", "human_study/export.json", "human_study/fingerprints.json",
              "config.human_study.yaml", "human_study/analysis/*.csv", "human_study/analysis/*.png",
              "human_study/simulated/experiment{1,2}_results.csv"))
def human_study(run: RunDir, command: str, device, rounds: list[int] | None = None, force: bool = False,
                results: list[str] = (), preference: float = 0.6, equal_share: float = 0.2, agreement: float = 0.3,
                accuracy: str = "0.85", dont_know: float = 0.05, workers: int = 0, seed: int | None = None, log=print):
    """``export``: the stimuli, batch files and answer keys of the chosen rounds (None: the rounds nearest to
    human_study.weights_remaining), then the task pages; ``analyse``: the ``results`` files of that export;
    ``simulate``: result files drawn with a chosen preference and agreement, and the power of the design."""
    if command == "export":
        summary = export_stimuli(run, device, rounds, force=force, log=log)
        write_task_pages(run, log=log)
        return summary
    if command == "analyse":
        if not results:
            raise UserError("analyse needs the result files: python main_human_study.py analyse RESULTS.csv [...]")
        tables = analyse(run, list(results), log=log)
        print_tables(tables, log=log)
        return tables
    return simulate_and_plan(run, preference=preference, equal_share=equal_share, agreement=agreement,
                             accuracy=accuracy, dont_know=dont_know, workers=workers, seed=seed, log=log)
