"""Concept activation vectors: linear classifiers on bottleneck activations, concept and random sets, storage.

Choices (algorithms.md section 3 leaves them open):
- Features are standardised (StandardScaler fitted on the training part) because the solvers converge
  far better on standardised activations; the fitted normal w lives in standardised space, so it is
  mapped back to the raw activation space as ``w / scale`` before unit-normalising: the TCAV gradient
  is taken with respect to the raw activation.
- Class balance: the concept sets subsample the negatives to the size of the positive set (TCAV paper
  practice, and it makes every run's negative set different); any imbalance left (few negatives) is
  absorbed by ``class_weight="balanced"`` in the classifier.
- Held-out split: per class, ``max(2, round(test_fraction * n))`` examples are held out; a class with
  fewer than 2 examples left for training or testing cannot give a CAV (NaN in `fit_all_cavs`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from ..errors import UserError
from ..names import unknown_name
from ..workers import die_with_parent

CLASSIFIERS = ("logistic", "svm", "sgd")
NEGATIVES = ("rest", "random")
MIN_PER_SIDE = 2  # examples of each class needed in the training part and in the held-out part


class NotEnoughExamples(UserError):
    """A concept (or random set) has too few positives or negatives for a held-out CAV fit."""


@dataclass(frozen=True)
class CAV:
    """A unit vector in raw activation space pointing towards the concept, and its held-out accuracy."""

    vector: np.ndarray
    accuracy: float
    n_pos: int
    n_neg: int


def _held_out_split(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (train, test) with at least MIN_PER_SIDE on each side."""
    n_test = max(MIN_PER_SIDE, int(round(test_fraction * n)))
    if n - n_test < MIN_PER_SIDE:
        raise NotEnoughExamples(f"{n} examples are too few for a held-out split (need {2 * MIN_PER_SIDE})")
    perm = rng.permutation(n)
    return perm[n_test:], perm[:n_test]


def _classifier(name: str, C: float, n_train: int, seed: int):
    if name == "logistic":
        return LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
    if name == "svm":
        return LinearSVC(C=C, class_weight="balanced", max_iter=10000, random_state=seed)
    if name == "sgd":
        # alpha = 1 / (C n) is the regularisation LogisticRegression/SVC use for the same C; averaging the
        # iterates steadies SGD when there are far more units than examples (D >> n)
        return SGDClassifier(alpha=1.0 / (C * n_train), class_weight="balanced", max_iter=2000, tol=1e-4,
                             average=True, random_state=seed)
    raise UserError(f"CAV classifier '{name}' is unknown; use one of {', '.join(CLASSIFIERS)}")


def fit_cav(
    pos: np.ndarray,
    neg: np.ndarray,
    *,
    classifier: str = "logistic",
    test_fraction: float = 0.33,
    seed: int = 0,
    C: float = 1.0,
) -> CAV:
    """Fit a linear classifier positives-vs-negatives ([n, D] each) and return its normal as a CAV.

    The split is stratified and seeded; features are standardised for the fit and the normal is mapped
    back to raw space (``w / scale``), unit-normalised, pointing towards the positives. Raises
    `NotEnoughExamples` when a side has fewer than 4 examples.
    """
    if classifier not in CLASSIFIERS:
        raise UserError(f"CAV classifier '{classifier}' is unknown; use one of {', '.join(CLASSIFIERS)}")
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise UserError(f"CAV inputs must be [n, D] arrays with the same D, got {pos.shape} and {neg.shape}")
    rng = np.random.default_rng(seed)
    try:
        pos_tr, pos_te = _held_out_split(len(pos), test_fraction, rng)
        neg_tr, neg_te = _held_out_split(len(neg), test_fraction, rng)
    except NotEnoughExamples as e:
        raise NotEnoughExamples(f"{len(pos)} positives / {len(neg)} negatives: {e}") from None
    x_train = np.concatenate([pos[pos_tr], neg[neg_tr]])
    y_train = np.r_[np.ones(len(pos_tr)), np.zeros(len(neg_tr))]
    x_test = np.concatenate([pos[pos_te], neg[neg_te]])
    y_test = np.r_[np.ones(len(pos_te)), np.zeros(len(neg_te))]

    scaler = StandardScaler().fit(x_train)
    model = _classifier(classifier, C, len(x_train), seed)
    model.fit(scaler.transform(x_train), y_train)
    accuracy = float(np.mean(model.predict(scaler.transform(x_test)) == y_test))

    # classes_ are sorted, so class 1 (the concept) is the positive side of coef_
    raw = model.coef_.ravel() / scaler.scale_
    norm = np.linalg.norm(raw)
    vector = raw / norm if norm > 0 else np.full_like(raw, np.nan)
    return CAV(vector=vector, accuracy=accuracy, n_pos=len(pos), n_neg=len(neg))


def concept_sets(
    concepts: np.ndarray,
    concept_index: int,
    *,
    negatives: str = "rest",
    n_runs: int = 10,
    rng: np.random.Generator,
    max_per_set: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_runs` (positive indices, negative indices) pairs for one concept column of a 0/1 matrix [N, n_concepts].

    Positives: the examples with the concept (a seeded subsample of `max_per_set` when capped).
    Negatives, as many as positives when possible, a different seeded draw each run:
    ``rest`` draws from the examples without the concept; ``random`` draws from the whole pool except
    this run's positives (TCAV paper: random images, which may hold the concept). So that ``random``
    differs from ``rest`` when no cap is given, its positives are then a fresh random half of the
    concept's examples each run, and the other half stays in the random pool at its natural rate.
    """
    if negatives not in NEGATIVES:
        raise UserError(f"CAV negatives '{negatives}' is unknown; use one of {', '.join(NEGATIVES)}")
    column = np.asarray(concepts)[:, concept_index] > 0.5
    all_pos = np.flatnonzero(column)
    rest = np.flatnonzero(~column)
    runs = []
    cap = max_per_set
    if negatives == "random" and cap is None:
        cap = max(len(all_pos) // 2, 1)
    for _ in range(n_runs):
        pos = all_pos
        if cap is not None and len(pos) > cap:
            pos = np.sort(rng.choice(pos, size=cap, replace=False))
        pool = rest if negatives == "rest" else np.setdiff1d(np.arange(len(column)), pos, assume_unique=True)
        neg = np.sort(rng.choice(pool, size=min(len(pos), len(pool)), replace=False))
        runs.append((pos, neg))
    return runs


def random_sets(n: int, set_size: int, n_random: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_random` pairs of disjoint random index sets (A, B) of `set_size` each (at most n // 2) drawn from range(n):
    random-vs-random CAVs give the null distribution of TCAV scores."""
    size = min(int(set_size), n // 2)
    out = []
    for _ in range(n_random):
        perm = rng.permutation(n)
        out.append((np.sort(perm[:size]), np.sort(perm[size:2 * size])))
    return out


def _parallel(n_jobs: int) -> Parallel:
    """joblib's Parallel whose worker processes die with this one (see :mod:`lottery_xai.workers`)."""
    try:
        return Parallel(n_jobs=n_jobs, initializer=die_with_parent, initargs=(os.getpid(),))
    except TypeError:  # a joblib that takes no executor arguments (< 1.3): its workers end at their idle timeout
        return Parallel(n_jobs=n_jobs)


def _fit_one(acts, pos_idx, neg_idx, classifier, test_fraction, seed, C):
    """Worker: one CAV fit, or None when the sets are too small."""
    try:
        cav = fit_cav(acts[pos_idx], acts[neg_idx], classifier=classifier, test_fraction=test_fraction, seed=seed, C=C)
    except NotEnoughExamples:
        return None
    return cav.vector, cav.accuracy


def fit_all_cavs(
    acts: np.ndarray,
    concepts: np.ndarray,
    concept_names: list[str],
    *,
    n_random: int = 10,
    negatives: str = "rest",
    classifier: str = "logistic",
    seed: int = 0,
    n_jobs: int = -1,
    test_fraction: float = 0.33,
    C: float = 1.0,
    max_per_set: int | None = None,
    random_set_size: int | None = None,
) -> dict:
    """CAVs for every concept column (`n_random` runs each) and `n_random` random-vs-random CAVs.

    `acts` [N, D] (a memory map is fine), `concepts` [N, n_concepts] 0/1. Fits run in parallel
    (joblib, `n_jobs`); all sets and seeds are drawn up front from `seed`, so the result does not
    depend on `n_jobs`. Random sets have `random_set_size` examples (default: the median concept set
    size). Concepts with too few positives or negatives get NaN CAVs and accuracies, with a warning.
    Returns dict(concepts, cavs [n_concepts, n_random, D], accuracy [n_concepts, n_random],
    random_cavs [n_random, D], random_accuracy [n_random]).
    """
    concepts = np.asarray(concepts)
    if acts.ndim != 2:
        raise UserError(f"activations must be [N, D], got shape {acts.shape}")
    if concepts.ndim != 2 or len(concepts) != len(acts):
        raise UserError(f"concept labels {concepts.shape} do not match activations {acts.shape} (one row per image)")
    if len(concept_names) != concepts.shape[1]:
        raise UserError(f"{len(concept_names)} concept names for {concepts.shape[1]} concept columns")
    if classifier not in CLASSIFIERS:
        raise UserError(f"CAV classifier '{classifier}' is unknown; use one of {', '.join(CLASSIFIERS)}")
    if n_random < 1:
        raise UserError(f"n_random must be at least 1, got {n_random}")
    n, d = acts.shape
    n_concepts = concepts.shape[1]

    # every random choice is made here, in order, so workers only compute
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_concepts + 1)]
    tasks = []  # (kind, concept, run, pos_idx, neg_idx, fit_seed)
    for c in range(n_concepts):
        sets = concept_sets(concepts, c, negatives=negatives, n_runs=n_random, rng=streams[c], max_per_set=max_per_set)
        fit_seeds = streams[c].integers(0, 2**31 - 1, size=n_random)
        tasks += [("concept", c, r, p, q, int(s)) for r, ((p, q), s) in enumerate(zip(sets, fit_seeds))]
    if random_set_size is None:
        counts = (concepts > 0.5).sum(axis=0)
        if negatives == "random" and max_per_set is None:
            counts = np.maximum(counts // 2, np.minimum(counts, 1))  # the concept sets are halves (concept_sets)
        sizes = np.minimum(counts, max_per_set or n)
        sizes = sizes[sizes > 0]
        random_set_size = int(np.median(sizes)) if len(sizes) else n // 2
    random_set_size = max(random_set_size, 2 * MIN_PER_SIDE)
    rsets = random_sets(n, random_set_size, n_random, streams[-1])
    fit_seeds = streams[-1].integers(0, 2**31 - 1, size=n_random)
    tasks += [("random", -1, r, p, q, int(s)) for r, ((p, q), s) in enumerate(zip(rsets, fit_seeds))]

    # one BLAS thread per fit: the problems are tiny, threads only add contention (8x slower on 2 busy
    # cores); the parallelism is across fits (joblib workers get the same limit from joblib itself).
    # The workers (loky processes, reused from call to call) die with this process, even when it is killed.
    with threadpool_limits(limits=1, user_api="blas"):
        results = _parallel(n_jobs)(
            delayed(_fit_one)(acts, p, q, classifier, test_fraction, s, C) for (_, _, _, p, q, s) in tasks
        )

    cavs = np.full((n_concepts, n_random, d), np.nan)
    accuracy = np.full((n_concepts, n_random), np.nan)
    random_cavs = np.full((n_random, d), np.nan)
    random_accuracy = np.full(n_random, np.nan)
    for (kind, c, r, *_), res in zip(tasks, results):
        if res is None:
            continue
        if kind == "concept":
            cavs[c, r], accuracy[c, r] = res
        else:
            random_cavs[r], random_accuracy[r] = res
    for c in np.flatnonzero(np.isnan(accuracy).all(axis=1)):
        n_pos = int((concepts[:, c] > 0.5).sum())
        warnings.warn(f"concept '{concept_names[c]}' has {n_pos} positives and {n - n_pos} negatives, too few "
                      f"for a held-out CAV (need {2 * MIN_PER_SIDE} of each); its CAVs are NaN", stacklevel=2)
    if np.isnan(random_accuracy).any():
        warnings.warn(f"random sets of {random_set_size} examples out of {n} are too small for some random CAVs; "
                      "they are NaN", stacklevel=2)
    return dict(concepts=list(concept_names), cavs=cavs, accuracy=accuracy,
                random_cavs=random_cavs, random_accuracy=random_accuracy)


def select_concepts(result: dict, names: list[str] | None) -> list[int]:
    """Indices of `names` in a CAV result (all concepts for None or ["all"]); UserError with close matches."""
    known = list(result["concepts"])
    if names is None or list(names) == ["all"]:
        return list(range(len(known)))
    out = []
    for name in names:
        if name not in known:
            raise unknown_name(f"concept '{name}' is not among the CAVs' concepts", name, known, cutoff=0.6)
        out.append(known.index(name))
    return out


_KEYS = ("concepts", "cavs", "random_cavs", "accuracy", "random_accuracy")


def save_cavs(path: str | os.PathLike, result: dict) -> Path:
    """Write a `fit_all_cavs` result to an `.npz` file atomically (temporary name in the same folder, then rename)."""
    from .. import rundir as rd

    path = Path(path)
    arrays = {k: np.asarray(result[k]) for k in _KEYS}
    arrays["concepts"] = np.asarray(list(result["concepts"]), dtype=str)
    rd.save_npz(path, **arrays)
    return path


def load_cavs(path: str | os.PathLike) -> dict:
    """Read a file written by `save_cavs` back into the `fit_all_cavs` dict (concept names as a list of str)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CAV file '{path}' does not exist; run the CAV step (main_lth_generate_cavs.py) first")
    from .. import rundir as rd  # the run directory's safe readers

    step = "step 4 (main_lth_generate_cavs.py)"
    out = {k: v for k, v in rd.load_npz(path, keys=_KEYS, step=step).items() if k in _KEYS}
    n_concepts = out["concepts"].size
    cavs, random_cavs = out["cavs"], out["random_cavs"]
    if out["concepts"].ndim != 1 or cavs.ndim != 3 or random_cavs.ndim != 2 or len(cavs) != n_concepts \
            or cavs.shape[-1] != random_cavs.shape[-1] or out["accuracy"].shape != cavs.shape[:2] \
            or out["random_accuracy"].shape != random_cavs.shape[:1]:
        raise rd.unreadable(path, f"inconsistent shapes: {n_concepts} concepts, cavs {list(cavs.shape)}, "
                                  f"random_cavs {list(random_cavs.shape)}", step)
    out["concepts"] = [str(s) for s in out["concepts"]]
    return out
