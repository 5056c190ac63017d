"""Metrics against hand-built answers, scikit-learn, and a brute-force PRO reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from ssnf.errors import MetricError
from ssnf.metrics import aupro, compute_metrics, f1_max, image_auroc, paired_auroc_difference, pixel_auroc, pro_curve


# --- AUROC ---

def test_auroc_hand_cases():
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert image_auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # constant scores: documented 0.5
    assert image_auroc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)  # tie counts one half


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes many ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    masks = rng.random((4, 16, 16)) < 0.1
    maps = np.round(rng.random((4, 16, 16)) + masks * 0.3, 2).astype(np.float32)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_auroc_degenerate_inputs_are_errors():
    with pytest.raises(MetricError, match="got 3 normal and 0 anomalous"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="NaN or infinite"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(MetricError, match="3 labels but 2 scores"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="0/1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(MetricError, match="pixel AUROC: masks of shape"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(MetricError, match="pixel AUROC needs normal and anomalous"):
        pixel_auroc(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))


# --- F1-max ---

@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    best, threshold = f1_max(labels, scores)
    assert best == pytest.approx(f1[:-1].max(), abs=1e-12)
    predicted = scores >= threshold
    tp = (predicted & labels).sum()
    assert best == pytest.approx(2 * tp / (predicted.sum() + labels.sum()), abs=1e-12)


def test_f1_max_hand_case():
    best, threshold = f1_max([0, 0, 1, 1, 0], [0.1, 0.2, 0.8, 0.7, 0.75])
    assert best == pytest.approx(0.8)  # threshold 0.7: tp 2, fp 1 -> 2*2/(3+2)
    assert threshold == 0.7


# --- AUPRO ---

def brute_force_aupro(masks, maps, limit=0.3):
    """Independent reference: threshold at every distinct score, then np.interp + np.trapezoid."""
    structure = np.ones((3, 3), dtype=int)
    regions = []
    for i, m in enumerate(masks):
        labeled, n = ndimage.label(m, structure)
        regions += [(i, labeled == k) for k in range(1, n + 1)]
    ok = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        fprs.append((hit & ok).sum() / ok.sum())
        pros.append(np.mean([hit[i][r].mean() for i, r in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= limit
    x, y = fprs[keep], pros[keep]
    if x[-1] < limit:
        nxt = np.argmax(fprs > limit)
        y_lim = np.interp(limit, [fprs[nxt - 1], fprs[nxt]], [pros[nxt - 1], pros[nxt]])
        x, y = np.r_[x, limit], np.r_[y, y_lim]
    return np.trapezoid(y, x) / limit


@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 20, 20), dtype=bool)
    for i in range(4):  # one image stays normal
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, 16, 2)
            masks[i, y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = True
    maps = np.round(rng.random(masks.shape) + masks * rng.uniform(0.1, 0.8), 2)  # many ties
    assert aupro(masks, maps) == pytest.approx(brute_force_aupro(masks, maps), abs=1e-12)
    assert aupro(masks, maps.astype(np.float32)) == pytest.approx(
        brute_force_aupro(masks, maps.astype(np.float32)), abs=1e-9)
    for limit in (0.05, 1.0):
        assert aupro(masks, maps, limit) == pytest.approx(brute_force_aupro(masks, maps, limit), abs=1e-12)


def test_aupro_hand_cases():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:7, 5:7] = True
    maps = np.full(masks.shape, 0.5)
    assert aupro(masks, masks.astype(float)) == 1.0  # perfect map
    assert aupro(masks, maps) == pytest.approx(0.15)  # constant map: the chance line, fpr_limit / 2
    # region A found above every normal pixel, region B below every one: PRO 0.5 across [0, 0.3]
    found = maps.copy()
    found[0, 1:3, 1:3] = 1.0
    found[1, 5:7, 5:7] = 0.0
    assert aupro(masks, found) == pytest.approx(0.5)


def test_aupro_uses_eight_connected_regions():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one region under 8-connectivity
    mask[4, 4] = True
    scores = np.zeros((6, 6))
    scores[1, 1] = scores[4, 4] = 1.0  # half of the diagonal region, all of the single pixel
    fpr, pro = pro_curve(mask, scores)
    assert fpr[1] == 0.0
    assert pro[1] == pytest.approx((0.5 + 1.0) / 2)  # 4-connectivity would give (1 + 0 + 1) / 3


def test_aupro_degenerate_inputs_are_errors():
    with pytest.raises(MetricError, match="at least one anomalous pixel"):
        aupro(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))
    with pytest.raises(MetricError, match="needs normal pixels"):
        aupro(np.ones((1, 4, 4)), np.random.rand(1, 4, 4))
    with pytest.raises(MetricError, match="NaN or infinite"):
        aupro(np.eye(4)[None], np.full((1, 4, 4), np.inf))
    with pytest.raises(MetricError, match="masks of shape"):
        aupro(np.eye(4)[None], np.zeros((1, 4, 5)))
    with pytest.raises(MetricError, match="fpr_limit"):
        aupro(np.eye(4)[None], np.zeros((1, 4, 4)), fpr_limit=0.0)


def test_compute_metrics_bundles_all_four():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 12, 12), dtype=bool)
    masks[3:, 4:8, 4:8] = True
    maps = rng.random(masks.shape) * 0.5 + masks
    labels = masks.any(axis=(1, 2))
    out = compute_metrics(labels, maps.max(axis=(1, 2)), masks, maps)
    assert set(out) == {"image_auroc", "image_f1_max", "pixel_auroc", "aupro"}
    assert out["image_auroc"] == 1.0 and out["pixel_auroc"] == 1.0 and out["aupro"] == 1.0
    assert set(compute_metrics(labels, maps.max(axis=(1, 2)))) == {"image_auroc", "image_f1_max"}


# --- paired bootstrap of an AUROC difference ---

def test_paired_auroc_difference_matches_the_two_aurocs_and_a_brute_force_bootstrap():
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(12, bool), np.ones(30, bool)]
    a = rng.normal(size=42) + labels * 1.0
    b = np.round(rng.normal(size=42) + labels * 0.5, 1)  # ties inside b
    out = paired_auroc_difference(labels, a, b, rounds=400, seed=5)
    assert out["diff"] == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    # the same draws, resampled image by image and scored by scikit-learn
    draw = np.random.default_rng(5)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    pos_counts = draw.multinomial(pos.size, np.full(pos.size, 1 / pos.size), size=400)
    neg_counts = draw.multinomial(neg.size, np.full(neg.size, 1 / neg.size), size=400)
    brute = []
    for pc, nc in zip(pos_counts, neg_counts):
        idx = np.r_[np.repeat(pos, pc), np.repeat(neg, nc)]
        brute.append(roc_auc_score(labels[idx], a[idx]) - roc_auc_score(labels[idx], b[idx]))
    assert out["low"] == pytest.approx(np.quantile(brute, 0.025))
    assert out["high"] == pytest.approx(np.quantile(brute, 0.975))
    assert out["a_ahead"] == pytest.approx(np.mean(np.array(brute) > 0))
    assert out["low"] < out["diff"] < out["high"]


def test_paired_auroc_difference_of_identical_rankings_is_exactly_zero():
    labels = np.r_[np.zeros(5), np.ones(7)]
    scores = np.arange(12.0)
    out = paired_auroc_difference(labels, scores, scores * 3 + 1, rounds=50)
    assert out == {"diff": 0.0, "low": 0.0, "high": 0.0, "a_ahead": 0.0}


def test_paired_auroc_difference_refuses_mismatched_or_one_class_inputs():
    with pytest.raises(MetricError, match="3 labels, 3 and 2 scores"):
        paired_auroc_difference([0, 1, 1], [1, 2, 3], [1, 2])
    with pytest.raises(MetricError, match="0 normal and 3 anomalous"):
        paired_auroc_difference([1, 1, 1], [1, 2, 3], [1, 2, 3])
    with pytest.raises(MetricError, match="rounds=0"):
        paired_auroc_difference([0, 1], [1, 2], [1, 2], rounds=0)
    with pytest.raises(MetricError, match=r"shapes \(1, 1, 2\) and \(2,\)"):
        paired_auroc_difference([0, 1], [[[1, 2]]], [1, 2])


def test_paired_auroc_difference_over_several_runs_is_the_mean_of_their_differences():
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(10, bool), np.ones(20, bool)]
    a = rng.normal(size=(3, 30)) + labels
    b = rng.normal(size=(3, 30)) + labels * 0.8
    out = paired_auroc_difference(labels, a, b, rounds=200)
    each = [roc_auc_score(labels, ra) - roc_auc_score(labels, rb) for ra, rb in zip(a, b)]
    assert out["diff"] == pytest.approx(np.mean(each))
    # one run alone gives what the one-dimensional call gives, on the same draws
    assert paired_auroc_difference(labels, a[:1], b[:1], rounds=200) == paired_auroc_difference(labels, a[0], b[0],
                                                                                               rounds=200)
    with pytest.raises(MetricError, match="NaN"):
        paired_auroc_difference(labels, np.where(np.arange(30) == 3, np.nan, a[0]), b[0])
