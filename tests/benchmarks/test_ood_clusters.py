"""The breed-shift proxy of ``benchmarks.ood``: planted clusters are found, the probe learns
what is learnable, and every training photo is left out exactly once."""

from __future__ import annotations

import torch

from benchmarks.ood import held_out_clusters, probe_accuracy, spherical_kmeans, three_answers


def planted(n_per: int = 40, dim: int = 32, k: int = 4, seed: int = 0):
    """``k`` tight clusters on the sphere around random directions, and their indices."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    truth = torch.arange(k).repeat_interleave(n_per)
    return centres[truth] + 0.05 * torch.randn(len(truth), dim, generator=g), truth


def test_spherical_kmeans_recovers_planted_clusters():
    x, truth = planted()
    found = spherical_kmeans(x, 4, seed=1)
    # The same partition up to renaming: each found cluster is one planted cluster.
    for c in range(4):
        assert len(truth[found == c].unique()) == 1
    assert len(found.unique()) == 4


def test_probe_learns_a_separable_split_and_fails_a_random_one():
    x, truth = planted(k=2)
    y = truth.long()
    assert probe_accuracy(x[::2], y[::2], x[1::2], y[1::2]) == 1.0
    noise = torch.randint(0, 2, (len(x),), generator=torch.Generator().manual_seed(3))
    assert probe_accuracy(x[::2], noise[::2], x[1::2], noise[1::2]) < 0.8


def test_every_photo_is_left_out_once_and_far_clusters_are_refused():
    x, truth = planted(k=4)
    labels = (truth % 2).long()
    # Validation pets look like clusters 0-2 only: cluster 3, left out of the bank, is
    # unlike anything the threshold was placed on and must be refused.
    val = x[truth < 3][::3] + 0.01
    nonpets = -x[:20]
    out = held_out_clusters(x, labels, val, nonpets, ["cat", "dog"], 4, boot=50)
    for bank in out["banks"].values():
        assert sum(r["photos"] for r in bank["rows"]) == len(x)
        assert all(0.0 <= r["accepted"] <= r["not_refused"] <= 1.0 for r in bank["rows"])
        assert all(r["non_pets_accepted"] <= r["non_pets_not_refused"] for r in bank["rows"])
        # The one cluster no validation pet resembles (found by its members, whatever its number).
        unseen = next(r for r in bank["rows"] if r["photos"] == 40 and r["accepted"] == 0.0)
        assert unseen["non_pets_accepted"] == 0.0
        assert sum(r["accepted"] == 0.0 for r in bank["rows"]) == 1


def test_three_answers_split_each_group_by_both_thresholds():
    val = torch.arange(1, 101, dtype=torch.float64)  # thresholds: 96th (95%) and 99th (98%) smallest
    others = torch.tensor([50.0, 97.0, 98.0, 100.0, 200.0, 5.0])
    got = three_answers(val, others, ["animals", "animals", "animals", "food", "food", "people"], 0.95, 0.98)
    assert got["val pets"] == {"photos": 100, "pet": 96, "unsure": 3, "not_pet": 1}
    assert got["animals"] == {"photos": 3, "pet": 1, "unsure": 2, "not_pet": 0}
    assert got["food"] == {"photos": 2, "pet": 0, "unsure": 0, "not_pet": 2}
    assert got["people"] == {"photos": 1, "pet": 1, "unsure": 0, "not_pet": 0}
