"""Concepts: CAVs (linear concept directions at a layer) and TCAV (their influence on a class, with significance)."""
from .cav import CAV, concept_sets, fit_all_cavs, fit_cav, load_cavs, random_sets, save_cavs, select_concepts
from .tcav import class_gradients, gradients_by_class, layer_gradients, run_tcav, tcav_scores, tcav_significance

__all__ = [
    "CAV", "fit_cav", "concept_sets", "random_sets", "fit_all_cavs", "select_concepts", "save_cavs", "load_cavs",
    "layer_gradients", "gradients_by_class", "class_gradients", "tcav_scores", "tcav_significance", "run_tcav",
]
