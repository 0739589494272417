"""Metrics and the threshold rule, against values computed by hand."""
import math

import numpy as np
import pytest

from pipeline.evaluation import evaluate

#            N    N    N    N    P    P    P    P    P    P
Y = np.array([0,   0,   0,   0,   1,   1,   1,   1,   1,   1])
P = np.array([.1,  .2,  .35, .8,  .3,  .4,  .6,  .7,  .9,  .95])


def test_metrics_by_hand():
    m = evaluate.compute_metrics(Y, P, 0.5)
    # predicted P: .8 (FP), .6 .7 .9 .95 (TP); predicted N: .1 .2 .35 (TN), .3 .4 (FN)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    # AUC: of the 24 (P, N) pairs, the positive scores higher in all but:
    # .3 < .35, .3 < .8, .4 < .8, .6 < .8, .7 < .8  -> 5 discordant pairs
    assert m["auc"] == pytest.approx(19 / 24)


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 1)  # many ties
    assert evaluate.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert math.isnan(evaluate.roc_auc([1, 1], [0.2, 0.3]))


def test_threshold_is_highest_reaching_target_sensitivity():
    # positives sorted: .95 .9 .7 .6 .4 .3 ; target 0.8 of 6 -> need 5 -> 5th highest = .4
    t = evaluate.choose_threshold(Y, P, 0.8)
    assert t == pytest.approx(0.4)
    assert evaluate.compute_metrics(Y, P, t)["sensitivity"] >= 0.8
    assert evaluate.compute_metrics(Y, P, t + 1e-6)["sensitivity"] < 0.8  # it is the highest such
    assert evaluate.choose_threshold(Y, P, 1.0) == pytest.approx(0.3)
    assert evaluate.choose_threshold(Y, P, 0.5) == pytest.approx(0.7)  # 3 of 6


def test_plots_are_written(tmp_path):
    hist = [{"epoch": 1, "train_loss": .7, "val_loss": .6, "val_auc": .8},
            {"epoch": 2, "train_loss": .5, "val_loss": .5, "val_auc": .9}]
    paths = evaluate.save_plots(Y, P, 0.5, hist, tmp_path)
    assert sorted(p.name for p in paths) == ["confusion_matrix.png", "precision_recall.png", "roc.png",
                                             "training_curves.png"]
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_roc_auc_is_scikit_learns_with_ties():
    """evaluate.roc_auc (rank-based: the web tier has no scikit-learn) equals roc_auc_score,
    tied scores included, and is NaN with one class."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from pipeline.evaluation.evaluate import roc_auc

    rng = np.random.default_rng(3)
    for decimals in (1, 2, 6):
        y = rng.integers(0, 2, 300)
        p = np.round(rng.random(300) * 0.5 + 0.3 * y, decimals)
        assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert np.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
