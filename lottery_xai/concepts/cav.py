"""Concept activation vectors: linear classifiers on bottleneck activations, concept and random sets, storage.

The reference (Kim et al. 2018, "Interpretability Beyond Feature Attribution: Quantitative Testing with Concept
Activation Vectors (TCAV)", arXiv:1711.11279, sections 3.2 and 3.5; tensorflow/tcav, tcav/cav.py, tcav/tcav.py and
tcav/utils.py as released in tcav 0.2.2 / the repository's master), and how each of our options relates to it:

- Concept CAVs (``negatives="random"``, the reference and our default protocol). A CAV is the normal of a linear
  classifier separating the layer activations of the concept's examples from those of a set of random examples
  (paper 3.2). Significance needs several CAVs per concept: "instead of training a CAV once, against a single batch
  of random examples N, we perform multiple training runs" (paper 3.5). tensorflow/tcav runs concept ``c`` against
  random folders ``random500_0 .. random500_{n-1}`` (utils.py ``process_what_to_run_expand``, lines 54-105), one
  folder per run, the SAME folders for every concept. Each pair is balanced by truncating both sets to the smaller
  one's first examples (cav.py ``_create_cav_training_set``, lines 105-136). Here: ``n_random`` random sets are drawn
  once per call (a round and layer) from all the CAV splits' images, run i of every concept uses random set i as its
  negatives; the concept's positives are its examples in a fixed seeded order minus those in random set i (an image
  is never on both sides), and both sides are cut to the shorter one's first examples.
- The null (``random_cavs``). tensorflow/tcav without a ``random_counterpart`` trains every ordered pair of distinct
  random folders, random set j as the positive side against random set i (tcav.py ``_process_what_to_run_expand``,
  lines 319-382, the loop over ``i`` with ``num_random_exp - 1`` partners each), n (n - 1) random CAVs trained exactly
  as the concept CAVs, and tests the concept's n scores against all of them (utils.py line 219). We do the same (the
  ``random_counterpart`` variant, one fixed positive random set, is not offered).
- The classifier: tensorflow/tcav's default ``model_type='linear'`` is ``SGDClassifier(alpha, max_iter=1000,
  tol=1e-3)`` (hinge loss, no class weights; cav.py lines 48 and 168-169; ``alpha`` is 0.01 in ``default_hparams``
  and whatever the caller's ``alphas`` list holds in ``TCAV.run``: 0.1 in its Run_TCAV notebook), ``'logistic'`` is
  sklearn's ``LogisticRegression()`` (line 171). Both are fitted on the RAW flattened activations, 2/3 of the balanced
  set, stratified (``train_test_split(test_size=0.33, stratify=y)``, line 251). Our ``linear`` is that SGDClassifier
  (seeded; the reference passes no random_state), on raw activations when ``standardize=False``.
- The direction: tensorflow/tcav's CAV is ``-coef_`` (the concept is label 0; cav.py lines 177-180), not normalised;
  the paper uses a unit CAV (3.3). Ours is the unit normal pointing towards the positives; TCAV counts only signs, so
  the scaling does not change a score.

Our stricter option (``negatives="rest"``, ``standardize=True``, classifier ``logistic``: the ``strict`` protocol):
- negatives are examples WITHOUT the concept, as many as the positives, a fresh seeded draw per run; the null is
  ``n_random`` CAVs between two disjoint random sets;
- features are standardised (StandardScaler fitted on the training part) because the solvers converge far better on
  standardised activations; the fitted normal w lives in standardised space, so it is mapped back to the raw
  activation space as ``w / scale`` before unit-normalising (the TCAV gradient is taken with respect to the raw
  activation). Standardising changes the direction of a max-margin or regularised normal (not only its scale), which
  is why the reference protocol fits on raw activations;
- ``class_weight="balanced"`` absorbs any imbalance left (few negatives).

Held-out split (both): per class, ``max(2, round(test_fraction * n))`` examples are held out; a class with fewer than
2 examples left for training or testing cannot give a CAV (NaN in `fit_all_cavs`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from ..errors import UserError
from ..names import unknown_name
from ..safe_io import load_npz, save_npz, unreadable
from ..workers import die_with_parent

CLASSIFIERS = ("linear", "logistic", "svm", "sgd")
NEGATIVES = ("rest", "random")
LINEAR_MAX_ITER, LINEAR_TOL = 1000, 1e-3  # tensorflow/tcav CAV.default_hparams (cav.py line 48)
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


def _classifier(name: str, C: float, n_train: int, seed: int, linear_alpha: float = 0.01):
    if name == "linear":  # tensorflow/tcav's model_type 'linear' (cav.py lines 168-169), seeded
        return SGDClassifier(alpha=linear_alpha, max_iter=LINEAR_MAX_ITER, tol=LINEAR_TOL, random_state=seed)
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
    standardize: bool = True,
    linear_alpha: float = 0.01,
) -> CAV:
    """Fit a linear classifier positives-vs-negatives ([n, D] each) and return its normal as a CAV.

    The split is stratified and seeded. ``standardize=False`` fits on the raw activations (the reference);
    ``True`` (this function's default, kept for its callers) fits on standardised features and maps the
    normal back to raw space (``w / scale``). The CAV is unit-normalised and points towards the positives.
    Solver convergence warnings are silenced (tensorflow/tcav's SGD does not converge within its 1000
    iterations on every set either). Raises `NotEnoughExamples` when a side has fewer than 4 examples.
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

    if standardize:
        scaler = StandardScaler().fit(x_train)
        x_train, x_test, scale = scaler.transform(x_train), scaler.transform(x_test), scaler.scale_
    else:
        scale = 1.0
    model = _classifier(classifier, C, len(x_train), seed, linear_alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    accuracy = float(np.mean(model.predict(x_test) == y_test))

    # classes_ are sorted, so class 1 (the concept) is the positive side of coef_
    raw = model.coef_.ravel() / scale
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
    """`n_runs` (positive indices, negative indices) pairs for one concept column of a 0/1 matrix [N, n_concepts],
    each run with its own negatives (the strict protocol's sets, ``rest``; `fit_all_cavs` builds the reference's
    shared random sets with `reference_sets` instead of this function's ``random``).

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


def reference_random_sets(n: int, set_size: int, n_sets: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The reference's random folders (``random500_i``): `n_sets` seeded draws of `set_size` (at most n // 2)
    indices from range(n), each without repeats, kept in draw order (so their first k are a random k of them).
    Sets are drawn independently and may share images, as random folders may."""
    size = min(int(set_size), n // 2)
    return [rng.permutation(n)[:size] for _ in range(n_sets)]


def reference_pair(positives: np.ndarray, random_set: np.ndarray,
                   max_per_set: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One reference training pair: `positives` (in their given order) without the images of `random_set`, capped at
    `max_per_set`, against `random_set`; both cut to the shorter one's first examples, as tensorflow/tcav's
    ``_create_cav_training_set`` truncates both sets to ``min_data_points`` (cav.py lines 125-131)."""
    positives = np.asarray(positives)
    positives = positives[~np.isin(positives, random_set)]
    if max_per_set:
        positives = positives[:max_per_set]
    k = min(len(positives), len(random_set))
    return positives[:k], np.asarray(random_set)[:k]


def reference_sets(
    concepts: np.ndarray,
    concept_index: int,
    random_image_sets: list[np.ndarray],
    *,
    rng: np.random.Generator,
    max_per_set: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run i of one concept in the reference protocol: the concept's examples (one seeded order, the same every run)
    against random set i (`reference_pair`). Every concept uses the same `random_image_sets`."""
    order = rng.permutation(np.flatnonzero(np.asarray(concepts)[:, concept_index] > 0.5))
    return [reference_pair(order, rs, max_per_set) for rs in random_image_sets]


def reference_null_pairs(n_sets: int) -> list[tuple[int, int]]:
    """The random-vs-random CAVs of tensorflow/tcav without a random counterpart: every ordered pair (p, q) of distinct
    random sets, p the positive side, q the negative (tcav.py ``_process_what_to_run_expand``), n (n - 1) of them."""
    return [(p, q) for p in range(n_sets) for q in range(n_sets) if q != p]


def training_sets(
    concepts: np.ndarray,
    *,
    n_random: int = 10,
    negatives: str = "rest",
    seed: int = 0,
    max_per_set: int | None = None,
    random_set_size: int | None = None,
) -> dict:
    """Every training set `fit_all_cavs` fits, and each fit's seed, drawn in order from `seed`.

    Returns dict(concept: [n_concepts][n_random] (pos, neg, fit_seed), random: [(pos, neg, fit_seed)],
    random_set_size, and for ``negatives="random"`` also random_sets (the n_random shared random sets)
    and random_pairs [n_random (n_random - 1), 2] (positive set, negative set) of the null CAVs).
    ``rest``: `concept_sets` per concept and `random_sets` pairs (the strict protocol, unchanged).
    ``random``: `reference_random_sets` shared by all concepts, `reference_sets` per concept and
    `reference_null_pairs` for the null. Random sets have `random_set_size` examples (default: the median
    size of the concept sets, at least 4, at most N // 2).
    """
    if negatives not in NEGATIVES:
        raise UserError(f"CAV negatives '{negatives}' is unknown; use one of {', '.join(NEGATIVES)}")
    concepts = np.asarray(concepts)
    n, n_concepts = concepts.shape
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_concepts + 1)]
    if random_set_size is None:
        counts = (concepts > 0.5).sum(axis=0)
        sizes = np.minimum(counts, max_per_set or n)
        sizes = sizes[sizes > 0]
        random_set_size = int(np.median(sizes)) if len(sizes) else n // 2
    random_set_size = max(random_set_size, 2 * MIN_PER_SIDE)
    out = {"concept": [], "random": [], "random_set_size": random_set_size}

    def seeded(sets, stream):
        fit_seeds = stream.integers(0, 2**31 - 1, size=len(sets))
        return [(p, q, int(s)) for (p, q), s in zip(sets, fit_seeds)]

    if negatives == "rest":  # today's draws, in today's order: the strict protocol reproduces its numbers
        for c in range(n_concepts):
            sets = concept_sets(concepts, c, negatives="rest", n_runs=n_random, rng=streams[c], max_per_set=max_per_set)
            out["concept"].append(seeded(sets, streams[c]))
        out["random"] = seeded(random_sets(n, random_set_size, n_random, streams[-1]), streams[-1])
        return out
    shared = reference_random_sets(n, random_set_size, n_random, streams[-1])
    for c in range(n_concepts):
        out["concept"].append(seeded(reference_sets(concepts, c, shared, rng=streams[c], max_per_set=max_per_set),
                                     streams[c]))
    pairs = reference_null_pairs(n_random)
    out["random"] = seeded([reference_pair(shared[p], shared[q]) for p, q in pairs], streams[-1])
    out["random_sets"] = shared
    out["random_pairs"] = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return out


def _parallel(n_jobs: int) -> Parallel:
    """joblib's Parallel whose worker processes die with this one (see :mod:`lottery_xai.workers`)."""
    try:
        return Parallel(n_jobs=n_jobs, initializer=die_with_parent, initargs=(os.getpid(),))
    except TypeError:  # a joblib that takes no executor arguments (< 1.3): its workers end at their idle timeout
        return Parallel(n_jobs=n_jobs)


def _fit_one(acts, pos_idx, neg_idx, classifier, test_fraction, seed, C, standardize=True, linear_alpha=0.01):
    """Worker: one CAV fit, or None when the sets are too small."""
    try:
        cav = fit_cav(acts[pos_idx], acts[neg_idx], classifier=classifier, test_fraction=test_fraction, seed=seed, C=C,
                      standardize=standardize, linear_alpha=linear_alpha)
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
    standardize: bool = True,
    linear_alpha: float = 0.01,
) -> dict:
    """CAVs for every concept column (`n_random` runs each) and the random-vs-random CAVs of the null.

    `acts` [N, D] (a memory map is fine), `concepts` [N, n_concepts] 0/1. The sets come from `training_sets`:
    ``negatives="random"`` is the reference protocol (run i of every concept against shared random set i;
    n_random (n_random - 1) random CAVs, one per ordered pair of random sets), ``"rest"`` the strict one
    (negatives without the concept; n_random random CAVs between disjoint random sets). The defaults of
    this function (rest, logistic, standardize) are the strict protocol's, kept for its callers; the
    pipeline passes ``config.cav_protocol``'s settings. Fits run in parallel (joblib, `n_jobs`); all sets
    and seeds are drawn up front from `seed`, so the result does not depend on `n_jobs`. Concepts with
    too few positives or negatives get NaN CAVs and accuracies, with a warning.
    Returns dict(concepts, cavs [n_concepts, n_random, D], accuracy [n_concepts, n_random],
    random_cavs [n_null, D], random_accuracy [n_null]) and, for ``random``, random_pairs [n_null, 2].
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
    if n_random < 1 or (negatives == "random" and n_random < 2):
        raise UserError(f"n_random must be at least {2 if negatives == 'random' else 1}, got {n_random}")
    n, d = acts.shape
    n_concepts = concepts.shape[1]

    # every random choice is made here, in order, so workers only compute
    sets = training_sets(concepts, n_random=n_random, negatives=negatives, seed=seed, max_per_set=max_per_set,
                         random_set_size=random_set_size)
    tasks = [("concept", c, r, p, q, s) for c, runs in enumerate(sets["concept"]) for r, (p, q, s) in enumerate(runs)]
    tasks += [("random", -1, r, p, q, s) for r, (p, q, s) in enumerate(sets["random"])]
    n_null = len(sets["random"])

    # one BLAS thread per fit: the problems are tiny, threads only add contention (8x slower on 2 busy
    # cores); the parallelism is across fits (joblib workers get the same limit from joblib itself).
    # The workers (loky processes, reused from call to call) die with this process, even when it is killed.
    with threadpool_limits(limits=1, user_api="blas"):
        results = _parallel(n_jobs)(
            delayed(_fit_one)(acts, p, q, classifier, test_fraction, s, C, standardize, linear_alpha)
            for (_, _, _, p, q, s) in tasks
        )

    cavs = np.full((n_concepts, n_random, d), np.nan)
    accuracy = np.full((n_concepts, n_random), np.nan)
    random_cavs = np.full((n_null, d), np.nan)
    random_accuracy = np.full(n_null, np.nan)
    for (kind, c, r, *_), res in zip(tasks, results):
        if res is None:
            continue
        if kind == "concept":
            cavs[c, r], accuracy[c, r] = res
        else:
            random_cavs[r], random_accuracy[r] = res
    for c in np.flatnonzero(np.isnan(accuracy).all(axis=1)):
        n_pos = int((concepts[:, c] > 0.5).sum())
        against = f"{n - n_pos} negatives" if negatives == "rest" else f"random sets of {sets['random_set_size']}"
        warnings.warn(f"concept '{concept_names[c]}' has {n_pos} positives and {against}, too few "
                      f"for a held-out CAV (need {2 * MIN_PER_SIDE} of each); its CAVs are NaN", stacklevel=2)
    if np.isnan(random_accuracy).any():
        warnings.warn(f"random sets of {sets['random_set_size']} examples out of {n} are too small for some random "
                      "CAVs; they are NaN", stacklevel=2)
    out = dict(concepts=list(concept_names), cavs=cavs, accuracy=accuracy,
               random_cavs=random_cavs, random_accuracy=random_accuracy)
    if "random_pairs" in sets:
        out["random_pairs"] = sets["random_pairs"]
    return out


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
_OPTIONAL = ("random_pairs", "settings")  # the null's random set pairs (reference); step 4's settings (a JSON string)


def save_cavs(path: str | os.PathLike, result: dict) -> Path:
    """Write a `fit_all_cavs` result to an `.npz` file atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    arrays = {k: np.asarray(result[k]) for k in _KEYS}
    arrays["concepts"] = np.asarray(list(result["concepts"]), dtype=str)
    if result.get("random_pairs") is not None:
        arrays["random_pairs"] = np.asarray(result["random_pairs"], dtype=np.int64).reshape(-1, 2)
    if result.get("settings") is not None:
        arrays["settings"] = np.asarray(str(result["settings"]))
    save_npz(path, **arrays)
    return path


def load_cavs(path: str | os.PathLike, step: str = "the step that writes it") -> dict:
    """Read a file written by `save_cavs` back into the `fit_all_cavs` dict (concept names as a list of str);
    ``step`` names what writes the file in the message about a missing or unreadable one (step 4's label)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CAV file '{path}' does not exist; run {step} first")
    out = {k: v for k, v in load_npz(path, keys=_KEYS, step=step).items() if k in _KEYS + _OPTIONAL}
    n_concepts = out["concepts"].size
    cavs, random_cavs = out["cavs"], out["random_cavs"]
    if out["concepts"].ndim != 1 or cavs.ndim != 3 or random_cavs.ndim != 2 or len(cavs) != n_concepts \
            or cavs.shape[-1] != random_cavs.shape[-1] or out["accuracy"].shape != cavs.shape[:2] \
            or out["random_accuracy"].shape != random_cavs.shape[:1]:
        raise unreadable(path, f"inconsistent shapes: {n_concepts} concepts, cavs {list(cavs.shape)}, "
                               f"random_cavs {list(random_cavs.shape)}", step)
    if "random_pairs" in out and out["random_pairs"].shape != (len(random_cavs), 2):
        raise unreadable(path, f"random_pairs {list(out['random_pairs'].shape)} for {len(random_cavs)} random CAVs", step)
    if "settings" in out:
        out["settings"] = str(out["settings"])
    out["concepts"] = [str(s) for s in out["concepts"]]
    return out
