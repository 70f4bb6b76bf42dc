"""Concept sources (lottery_xai/pipeline/concept_sources.py): the dataset's attributes and ACE's discovered
concepts behind one interface, so that steps 4 and 5 never import the ACE study."""
import numpy as np
import pytest

from lottery_xai import steps
from lottery_xai.config import load_config
from lottery_xai.errors import UserError
from lottery_xai.pipeline import concept_sources as cs
from lottery_xai.rundir import RunDir


class Info:
    concept_names = ["bill_hooked", "wing_blue", "tail_forked"]


def test_every_source_is_used_by_steps_4_and_5():
    """The step that makes a source's concepts is in the ``uses`` of steps 4 and 5 (run them after it)."""
    made_by = {s.made_by for s in cs.sources() if s.made_by is not None}
    assert made_by == {"ace"}
    for key in ("cavs", "tcav"):
        assert made_by <= set(steps.get(key).uses), key


def test_each_name_goes_to_the_source_that_claims_it():
    assert [s.key for s in cs.sources()] == ["attributes", "ace"]  # the attributes' concepts come first
    assert cs.source_of("ace:Blue_Jay:3").key == "ace" and cs.source_of("ace:all").key == "ace"
    assert cs.source_of("wing_blue").key == "attributes" and cs.source_of("all").key == "attributes"


def test_attributes_resolve_and_a_wrong_one_is_one_line(tmp_path):
    run = RunDir(load_config(None, [f"logs={tmp_path}", "concepts_for_tcav=[wing_blue,bill_hooked]"]))
    selection = cs.select_concepts(run, Info, "cavs")
    assert selection.names == {"attributes": ["wing_blue", "bill_hooked"]}
    assert selection.at(run.cfg, "layer3") == ["wing_blue", "bill_hooked"]
    assert selection.fitted_apart(run.cfg, "layer3") == []
    wrong = RunDir(load_config(None, [f"logs={tmp_path}", "concepts_for_tcav=[wing_bleu]"]))
    with pytest.raises(UserError, match="concept 'wing_bleu' in concepts_for_tcav is not in the dataset.*wing_blue"):
        cs.select_concepts(wrong, Info, "tcav")


def test_a_source_fitted_apart_is_appended_after_the_attributes_at_its_layers(tmp_path, monkeypatch):
    """A stand-in source (prefix ``toy:``, concepts at layer2 only) whose fit returns fixed CAVs: step 4's
    result gains them after the attributes' at layer2, and nothing at layer3."""
    calls = []

    def fit(run, r, layer, names, n_runs, seed):
        calls.append((r, layer, tuple(names), n_runs, seed))
        return {"concepts": list(names), "cavs": np.full((len(names), n_runs, 4), 7.0),
                "accuracy": np.full((len(names), n_runs), 0.9)}

    toy = cs.ConceptSource("toy", "a stand-in", prefix="toy:", resolve=lambda run, info, names, asking: list(names),
                           layers=lambda cfg: ["layer2"], fit=fit)
    monkeypatch.setitem(cs._SOURCES, "toy", toy)
    run = RunDir(load_config(None, [f"logs={tmp_path}", "concepts_for_tcav=[toy:a,wing_blue,toy:b]",
                                    "bb_layers_for_concepts=[layer2,layer3]", "cav.n_random=3"]))
    selection = cs.select_concepts(run, Info, "cavs")
    assert selection.names == {"attributes": ["wing_blue"], "toy": ["toy:a", "toy:b"]}
    assert selection.at(run.cfg, "layer2") == ["wing_blue", "toy:a", "toy:b"]
    assert selection.at(run.cfg, "layer3") == ["wing_blue"]
    labelled = {"concepts": ["wing_blue"], "cavs": np.ones((1, 3, 4)), "accuracy": np.full((1, 3), 0.8),
                "random_cavs": np.zeros((6, 4))}
    out = cs.with_sources_cavs(run, 2, "layer2", selection, labelled, seed=11)
    assert out["concepts"] == ["wing_blue", "toy:a", "toy:b"]
    assert out["cavs"].shape == (3, 3, 4) and (out["cavs"][0] == 1).all() and (out["cavs"][1:] == 7).all()
    assert out["accuracy"].tolist() == [[0.8] * 3, [0.9] * 3, [0.9] * 3]
    assert out["random_cavs"] is labelled["random_cavs"]  # the null is step 4's own
    assert calls == [(2, "layer2", ("toy:a", "toy:b"), 3, 11)]
    assert cs.with_sources_cavs(run, 2, "layer3", selection, labelled, seed=11)["concepts"] == ["wing_blue"]
    assert len(calls) == 1


def test_ace_names_need_the_activations_ace_clusters(tmp_path):
    run = RunDir(load_config(None, [f"logs={tmp_path}", "concepts_for_tcav=[all,ace:all]",
                                    "cav_flattening_type=flatten"]))
    with pytest.raises(UserError, match="need cav_flattening_type avg_pool"):
        cs.select_concepts(run, Info, "cavs")
