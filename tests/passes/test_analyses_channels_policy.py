"""Channel-pruning policy: counts, uniform and global selection, overrides, bisection,
sensitivity data and its plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shrinkc.passes.analyses.channels_policy import (
    Sensitivity,
    _bisect,
    keep_count,
    override_ratios,
    plot_sensitivity,
    select,
)


class G:  # the parts of a Group the policy reads
    def __init__(self, gid, size, names=()):
        self.id, self.size, self._names = gid, size, list(names)

    def names(self):
        return self._names


@pytest.mark.parametrize("size, ratio, round_to, keep", [
    (10, 0.3, 1, 7), (10, 0.5, 1, 5), (3, 0.5, 1, 2), (1, 0.9, 1, 1), (10, 0.99, 1, 1),
    (10, 0.3, 4, 8), (10, 0.9, 4, 4), (3, 0.5, 4, 3), (16, 0.5, 8, 8), (10, 0.0, 1, 10),
])
def test_keep_count(size, ratio, round_to, keep):
    assert keep_count(size, ratio, round_to) == keep


def test_local_selection_keeps_the_highest_scores():
    groups = [G(0, 4), G(1, 3)]
    scores = {0: np.array([0.1, 5.0, 3.0, 0.2]), 1: np.array([1.0, 1.0, 0.5])}
    keep = select(groups, scores, 0.5)
    assert keep[0].tolist() == [1, 2] and keep[1].tolist() == [0, 1]  # ties: lower index


def test_global_selection_compares_normalized_scores():
    # group 1's scores are 100x larger but as spread out: normalized, both lose the same
    groups = [G(0, 4), G(1, 4)]
    scores = {0: np.array([1.0, 2.0, 3.0, 4.0]), 1: np.array([100.0, 200.0, 300.0, 400.0])}
    keep = select(groups, scores, 0.5, scope="global")
    assert keep[0].tolist() == [2, 3] and keep[1].tolist() == [2, 3]
    uneven = {0: np.array([1.0, 1.0, 1.0, 1.0]), 1: np.array([0.1, 0.1, 1.0, 2.8])}
    keep = select(groups, uneven, 0.25, scope="global")
    assert keep[0].tolist() == [0, 1, 2, 3] and keep[1].tolist() == [2, 3]


def test_global_selection_keeps_at_least_round_to():
    groups = [G(0, 4), G(1, 4)]
    scores = {0: np.array([0.0, 0.0, 0.0, 0.01]), 1: np.array([5.0, 5.0, 5.0, 5.0])}
    # three of group 0's channels are the lowest, but it keeps round_to = 2 of them; the
    # third channel of the budget falls on group 1, whose 3 left are rounded up to 4
    keep = select(groups, scores, 0.375, scope="global", round_to=2)
    assert keep[0].tolist() == [0, 3] and len(keep[1]) == 4


def test_overrides_first_match_wins():
    groups = [G(0, 4, ["conv1", "layer1.0.conv1"]), G(1, 4, ["layer2.0.conv1"]), G(2, 4, ["fc"])]
    r = override_ratios(groups, ("layer1.*=0", "layer*=0.75", "conv1=0.5"))
    assert r == {0: 0.0, 1: 0.75}
    keep = select(groups, {g.id: np.arange(4.0) for g in groups}, 0.5, ratios=r)
    assert [len(keep[g.id]) for g in groups] == [4, 1, 2]


def test_bisection_finds_the_smallest_ratio_meeting_the_target():
    ratio, ok = _bisect(lambda r: 1.0 - r, 0.4)
    assert ok and abs(ratio - 0.6) < 1e-6
    ratio, ok = _bisect(lambda r: 1.0, 0.5)
    assert not ok and ratio == 0.99
    assert _bisect(lambda r: 0.3, 0.5) == (0.0, True)


def test_sensitivity_data_ratios_and_plot(tmp_path):
    sens = Sensitivity((0.25, 0.5, 0.75), [
        {"id": 3, "anchor": "%c:1", "size": 8, "layers": ["conv"], "errors": [0.01, 0.02, 0.5]},
        {"id": 5, "anchor": "%d:1", "size": 8, "layers": [], "errors": [0.2, 0.3, 0.4]}])
    assert sens.ratios_for(0.05) == {3: 0.5, 5: 0.0}
    again = Sensitivity.from_dict(json.loads(sens.to_json()))
    assert again.to_dict() == sens.to_dict()
    png = plot_sensitivity(sens, tmp_path / "s.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sensitivity_with_a_metric_measures_each_group_alone(ir):
    import torch
    from shrinkc.ir.interpreter import run
    from shrinkc.passes import PassContext
    from shrinkc.passes.analyses.channels import analyze_channels
    from shrinkc.passes.analyses.channels_policy import sensitivity

    g = ir("""
    graph "g" (%x: f32[1,3,5,5]) {
      %w1: f32[4,3,3,3] = const #1
      %w2: f32[6,4,3,3] = const #2
      %w3: f32[2,6,1,1] = const #3
      %a: f32[1,4,5,5] = conv2d(%x, %w1) {padding=[1, 1]}
      %b: f32[1,6,5,5] = conv2d(%a, %w2) {padding=[1, 1]}
      %c: f32[1,2,5,5] = conv2d(%b, %w3)
      return %c
    }""")
    a = analyze_channels(g)
    x = torch.randn(1, 3, 5, 5)
    want = run(g, [x])[0]
    seen = []

    def agreement(trial):  # a user metric: here the output's distance, as a "score"
        seen.append(trial)
        return float((run(trial, [x])[0] - want).abs().max())

    scores = {grp.id: np.arange(grp.size, dtype=float) for grp in a.prunable}
    sens = sensitivity(a, a.prunable, scores, (0.25, 0.5), PassContext(example_inputs=[x]),
                       metric=agreement)
    assert sens.metric == "agreement" and len(seen) == 2 * len(a.prunable)
    for row in sens.groups:
        assert all(e > 0 for e in row["errors"])  # every trial zeroed some channels
