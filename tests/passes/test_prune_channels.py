"""prune-channels: the oracle on every reference model and on one small model per coupling
kind; refusals with reasons; structure, stats, plans, the explanation and the CLI.

The oracle (``analyses/channels_plan.zeroed_copy``): the original graph with the channels
the plan drops fed as zeros into every sink of their group. The pruned graph must compute
the same outputs, in float64, with the same output shape.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shrinkc import trace
from shrinkc.ir.interpreter import run
from shrinkc.ir.text import graph_diff
from shrinkc.passes import PassContext, PassError, PassManager
from shrinkc.passes.analyses.channels import Dim, analyze_channels
from shrinkc.passes.analyses.channels_plan import zeroed_copy
from shrinkc.tools import zoo
from suite import as_f64, assert_close
from torch import nn


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """float64 convolutions (the oracle runs in double) on two threads of a loaded 2-core
    machine: 0.14 s per depthwise conv instead of 0.7 ms on one thread (measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def prune(graph, pipeline: str, inputs=None, **ctx):
    """(pruned graph, plan, stats) of running ``pipeline`` on a copy of ``graph``."""
    g = graph.clone()
    c = PassContext(example_inputs=inputs, **ctx)
    pm = PassManager(pipeline, c)
    pm.run(g)
    return g, c.artifacts.get("prune-plan"), pm.steps[-1].result.stats


def assert_oracle(graph, pruned, plan, inputs) -> None:
    """``pruned`` computes what the original computes with the plan's channels zeroed at
    their sinks, in float64, and keeps every output's shape."""
    zeroed = zeroed_copy(graph, analyze_channels(graph), plan)
    xs = [x.double() for x in inputs]
    with torch.no_grad():
        got, want = run(as_f64(pruned), xs), run(as_f64(zeroed), xs)
    assert [o.shape for o in pruned.outputs] == [o.shape for o in graph.outputs]
    assert_close(got, want, msg="pruned vs zeroed original")


# ============================================================================ zoo
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_oracle_on_reference_models(name, reference_graphs):
    _, x, g = reference_graphs(name)
    pruned, plan, stats = prune(g, "prune-channels(ratio=0.5)", [x])
    assert stats["channels_removed"] > 0 and pruned.num_params < g.num_params
    assert_oracle(g, pruned, plan, [x])


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-scale", "taylor", "apoz", "random"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_oracle_for_every_criterion_and_scope(criterion, scope, reference_graphs):
    _, x, g = reference_graphs("resnet18")
    pruned, plan, stats = prune(
        g, f"prune-channels(ratio=0.4, criterion={criterion}, scope={scope}, round_to=2)", [x])
    assert stats["channels_removed"] > 0
    for gp in plan.groups:
        assert len(gp.keep) % 2 == 0 or len(gp.keep) == gp.size
    assert_oracle(g, pruned, plan, [x])


# ============================================================================ coupling kinds
def cbr(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


def head(c, n=5):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n))


class Residual(nn.Module):
    """Two identity-shortcut blocks: one group spans the stem and both blocks' outputs."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.a = nn.Sequential(cbr(8, 6), nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.b = nn.Sequential(cbr(8, 6), nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = head(8)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a(x))
        x = F.relu(x + self.b(x))
        return self.head(x)


class Projection(nn.Module):
    """A strided block with a 1x1 conv + BN projection shortcut."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 6)
        self.body = nn.Sequential(cbr(6, 8, stride=2), nn.Conv2d(8, 10, 3, padding=1),
                                  nn.BatchNorm2d(10))
        self.proj = nn.Sequential(nn.Conv2d(6, 10, 1, 2, bias=False), nn.BatchNorm2d(10))
        self.head = head(10)

    def forward(self, x):
        x = self.stem(x)
        return self.head(F.relu(self.body(x) + self.proj(x)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 6), cbr(3, 4, k=1)
        self.c = cbr(10, 8)
        self.head = head(8)

    def forward(self, x):
        return self.head(self.c(torch.cat([self.a(x), self.b(x)], 1)))


class CascadedConcat(nn.Module):
    """DenseNet-style: each layer's input is the concat of everything before it."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 6)
        self.f, self.g = cbr(6, 4), cbr(10, 4)
        self.head = head(14)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.f(x)], 1)
        x = torch.cat([x, self.g(x)], 1)
        return self.head(x)


class Split(nn.Module):
    """Uneven split: each part feeds its own conv; one part is also used whole."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 10)
        self.a, self.b = cbr(6, 5), cbr(4, 5)
        self.head = head(5)

    def forward(self, x):
        p, q = self.stem(x).split([6, 4], 1)
        return self.head(self.a(p) + self.b(q))


class SwappedSplit(nn.Module):
    """The halves of a split concatenated in the other order: a channel permutation."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.c = cbr(8, 6)
        self.head = head(6)

    def forward(self, x):
        p, q = self.stem(x).chunk(2, 1)
        return self.head(self.c(torch.cat([q, p], 1)))


class Depthwise(nn.Module):
    """MobileNet-style depthwise (multiplier 1) and a depthwise with multiplier 2."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.dw = cbr(8, 8, groups=8)
        self.dw2 = cbr(8, 16, groups=8)
        self.pw = cbr(16, 6, k=1)
        self.head = head(6)

    def forward(self, x):
        return self.head(self.pw(self.dw2(self.dw(self.stem(x)))))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8)
        self.g = cbr(8, 12, groups=4)
        self.c = cbr(12, 6, k=1)
        self.head = head(6)

    def forward(self, x):
        return self.head(self.c(self.g(self.stem(x))))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = cbr(3, 6)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 12), nn.Linear(12, 5)

    def forward(self, x):
        x = torch.flatten(F.max_pool2d(self.conv(x), 2), 1)
        return self.fc2(F.relu(self.fc1(x)))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = cbr(3, 8)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.out = cbr(8, 6)
        self.head = head(6)

    def forward(self, x):
        y = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        return self.head(self.out(y * s.reshape(1, 8, 1, 1)))


class Attention(nn.Module):
    """The zoo's hand-written multi-head attention between two linears."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = zoo.Attention(16, 4)
        self.mlp = nn.Sequential(nn.Linear(16, 12), nn.GELU(), nn.Linear(12, 16))
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        t = self.inp(x)
        t = t + self.attn(t)
        t = t + self.mlp(t)
        return self.out(t.mean(1))


class GroupNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.gn = nn.GroupNorm(4, 12)
        self.c = cbr(12, 6)
        self.head = head(6)

    def forward(self, x):
        return self.head(self.c(F.relu(self.gn(self.conv(x)))))


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.5)  # BN(0) != 0
    return model.eval()


KINDS = {"residual": (Residual, (1, 3, 8, 8)), "projection": (Projection, (1, 3, 8, 8)),
         "concat": (Concat, (1, 3, 8, 8)), "cascaded_concat": (CascadedConcat, (1, 3, 8, 8)),
         "split": (Split, (1, 3, 8, 8)), "swapped_split": (SwappedSplit, (1, 3, 8, 8)),
         "depthwise": (Depthwise, (1, 3, 8, 8)), "grouped": (Grouped, (1, 3, 8, 8)),
         "flatten_linear": (FlattenLinear, (1, 3, 8, 8)),
         "squeeze_excite": (SqueezeExcite, (1, 3, 8, 8)), "attention": (Attention, (1, 5, 6)),
         "group_norm": (GroupNorm, (1, 3, 8, 8))}

_TRACED: dict = {}


def traced(kind: str):
    if kind not in _TRACED:
        cls, shape = KINDS[kind]
        torch.manual_seed(0)
        model = _randomize_bn(cls())
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        _TRACED[kind] = (trace(model, (x,)), x)
    return _TRACED[kind]


def group_of(analysis, loc: str):
    """The group whose anchor is the output channels of the layer at ``loc``."""
    for g in analysis.groups:
        producer = next((n for n in g.nodes if n.outputs[0].name == g.anchor.value), None)
        if producer is not None and producer.loc == loc:
            return g
    raise AssertionError(f"no group anchored at {loc}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_oracle_per_coupling_kind(kind):
    g, x = traced(kind)
    pruned, plan, stats = prune(g, "prune-channels(ratio=0.5)", [x])
    assert stats["channels_removed"] > 0
    assert_oracle(g, pruned, plan, [x])


def test_residual_chain_is_one_group():
    g, _ = traced("residual")
    grp = group_of(analyze_channels(g), "stem.0")
    locs = {n.loc for n in grp.nodes}
    assert {"stem.0", "a.1", "b.1", "a.0.0", "b.0.0", "head.2"} <= locs
    assert grp.prunable and grp.size == 8


def test_concat_parts_are_separate_groups_with_offsets():
    g, _ = traced("concat")
    a = analyze_channels(g)
    ga, gb = group_of(a, "a.0"), group_of(a, "b.0")
    cat = next(d for d in ga.members if d.value.startswith("cat"))
    assert ga.index[cat].ravel().tolist() == list(range(6))
    assert gb.index[cat].ravel().tolist() == list(range(6, 10))


def test_swapped_split_is_an_exact_permutation():
    g, _ = traced("swapped_split")
    a = analyze_channels(g)
    first, second = [grp for grp in a.groups if grp.anchor.value == "conv2d"]
    cat = next(d for d in first.members if d.value.startswith("cat"))
    # the stem's channels 0-3 are the concat's 4-7 and the other way round
    assert first.index[first.anchor].ravel().tolist() == [0, 1, 2, 3]
    assert first.index[cat].ravel().tolist() == [4, 5, 6, 7]
    assert second.index[cat].ravel().tolist() == [0, 1, 2, 3]


def test_depthwise_multiplier_keeps_blocks_and_groups():
    g, x = traced("depthwise")
    pruned, plan, _ = prune(g, "prune-channels(ratio=0.5)", [x])
    grp = group_of(analyze_channels(g), "stem.0")
    assert grp.prunable  # stem -> dw -> dw2 (two outputs per input) is one group
    dw2 = next(n for n in pruned.nodes if n.loc == "dw2.0")
    assert dw2.attrs["groups"] == dw2.inputs[0].shape[1] and \
        dw2.outputs[0].shape[1] == 2 * dw2.inputs[0].shape[1]


def test_grouped_conv_prunes_the_same_local_channel_of_every_group():
    g, x = traced("grouped")
    a = analyze_channels(g)
    stem = group_of(a, "stem.0")
    assert stem.size == 2 and stem.index[stem.anchor].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    pruned, plan, _ = prune(g, "prune-channels(ratio=0.5)", [x])
    conv = next(n for n in pruned.nodes if n.loc == "g.0")
    assert conv.attrs["groups"] == 4 and conv.inputs[0].shape[1] == 4


def test_attention_prunes_whole_heads():
    g, x = traced("attention")
    a = analyze_channels(g)
    heads = group_of(a, "attn.qkv")
    assert heads.prunable and heads.size == 4  # 4 heads of 4 channels in each of q, k, v
    qkv = next(d for d in heads.members if d.value == heads.anchor.value)
    assert heads.index[qkv][1].tolist() == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    pruned, plan, _ = prune(g, "prune-channels(ratio=0.5)", [x])
    shapes = [n.outputs[0].shape for n in pruned.nodes if n.op == "reshape"]
    assert (1, 5, 2, 4) in shapes  # two heads of four left
    # the head dim is refused: a part of the reshape into heads other than the heads
    assert any("other than the one that can shrink" in r for grp in a.refused for r in grp.reasons)


def test_group_norm_prunes_whole_normalization_groups():
    g, x = traced("group_norm")
    grp = group_of(analyze_channels(g), "conv")
    assert grp.size == 4 and grp.index[grp.anchor].shape == (4, 3)
    pruned, _, _ = prune(g, "prune-channels(ratio=0.5)", [x])
    gn = next(n for n in pruned.nodes if n.op == "group_norm")
    assert gn.attrs["num_groups"] == 2 and gn.inputs[0].shape[1] == 6


# ============================================================================ refusals
class ChannelShuffle(nn.Module):
    """ShuffleNet's view/transpose channel shuffle between two convs: a permutation."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 6)
        self.head = head(6)

    def forward(self, x):
        y = self.a(x)
        y = y.reshape(1, 2, 4, 8, 8).transpose(1, 2).reshape(1, 8, 8, 8)
        return self.head(self.b(y))


class Regroup(nn.Module):
    """A view that regroups channels with rows (8 x 8 -> 4 x 16) and back: no channel map."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 6)
        self.head = head(6)

    def forward(self, x):
        y = torch.relu(self.a(x).reshape(1, 4, 16, 8)).reshape(1, 8, 8, 8)
        return self.head(self.b(y))


def test_channel_shuffle_is_an_exact_permutation():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    g = trace(_randomize_bn(ChannelShuffle()), (x,))
    grp = group_of(analyze_channels(g), "a.0")
    assert grp.prunable and grp.size == 4  # one channel of each of the 2 shuffle groups
    assert grp.index[grp.anchor].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    shuffled = next(d for d in grp.members if d.axis == 1 and any(
        n.op == "conv2d" and n.inputs[0].name == d.value for n in grp.nodes))
    assert grp.index[shuffled].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    pruned, plan, _ = prune(g, "prune-channels(ratio=0.5)", [x])
    assert any(gp.id == grp.id for gp in plan.groups)
    assert (1, 2, 2, 8, 8) in [n.outputs[0].shape for n in pruned.nodes if n.op == "reshape"]
    assert_oracle(g, pruned, plan, [x])


class ChannelMean(nn.Module):
    """A mean over channels used as an attention map (CBAM-style)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 6)
        self.head = head(6)

    def forward(self, x):
        y = self.a(x)
        return self.head(self.b(y * torch.sigmoid(y.mean(1, keepdim=True))))


@pytest.mark.parametrize("model, reason", [
    (Regroup, "regroups axes"),
    (ChannelMean, "mean over this axis"),
])
def test_unprovable_patterns_are_refused_and_the_rest_is_exact(model, reason):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    g = trace(_randomize_bn(model()), (x,))
    grp = group_of(analyze_channels(g), "a.0")
    assert not grp.prunable and any(reason in r for r in grp.reasons), grp.reasons
    pruned, plan, stats = prune(g, "prune-channels(ratio=0.5)", [x])
    assert all(gp.id != grp.id for gp in plan.groups)
    assert stats["channels_removed"] > 0  # b's channels are still pruned
    assert_oracle(g, pruned, plan, [x])


def test_graph_outputs_and_inputs_are_never_pruned(ir):
    g = ir("""
    graph "g" (%x: f32[1,3,6,6]) {
      %w1: f32[4,3,3,3] = const #1
      %w2: f32[5,4,1,1] = const #2
      %c1: f32[1,4,6,6] = conv2d(%x, %w1) {padding=[1, 1]}
      %r: f32[1,4,6,6] = relu(%c1)
      %c2: f32[1,5,6,6] = conv2d(%r, %w2)
      return %c2, %r
    }""")
    a = analyze_channels(g)
    assert not a.prunable
    reasons = {r for grp in a.refused for r in grp.reasons}
    assert "graph input %x" in reasons and "graph output %r" in reasons
    pruned, plan, stats = prune(g, "prune-channels(ratio=0.5)")
    assert plan.groups == [] and stats["channels_removed"] == 0


# ============================================================================ structure
CHAIN = """
graph "g" (%x: f32[1,2,4,4]) {
  %w1: f32[4,2,1,1] = const [[[[1.0]], [[0.0]]], [[[0.1]], [[0.0]]], [[[2.0]], [[1.0]]], [[[0.0]], [[0.2]]]]
  %b1: f32[4] = const [0.5, 0.25, -0.5, 1.0]
  %g: f32[4] = const [1.0, 1.0, 1.0, 1.0]
  %be: f32[4] = const [0.1, 0.2, 0.3, 0.4]
  %m: f32[4] = const [0.0, 0.0, 0.0, 0.0]
  %v: f32[4] = const [1.0, 1.0, 1.0, 1.0]
  %w2: f32[3,4,1,1] = const [[[[1.0]], [[2.0]], [[3.0]], [[4.0]]], [[[5.0]], [[6.0]], [[7.0]], [[8.0]]], [[[9.0]], [[10.0]], [[11.0]], [[12.0]]]]
  %c1: f32[1,4,4,4] = conv2d(%x, %w1, %b1) loc("conv1")
  %bn: f32[1,4,4,4] = batch_norm(%c1, %g, %be, %m, %v) loc("bn1")
  %r: f32[1,4,4,4] = relu(%bn)
  %c2: f32[1,3,4,4] = conv2d(%r, %w2) loc("conv2")
  return %c2
}
"""


def test_structure_and_weights_of_a_pruned_chain(ir):
    before = ir(CHAIN)
    after, plan, stats = prune(before, "prune-channels(ratio=0.5, criterion=l1)")
    # l1 of the filters: 1.0, 0.1, 3.0, 0.2 -> keep channels 0 and 2
    assert plan.groups[0].keep == (0, 2)
    expected = ir("""
    graph "g" (%x: f32[1,2,4,4]) {
      %w1: f32[2,2,1,1] = const [[[[1.0]], [[0.0]]], [[[2.0]], [[1.0]]]]
      %b1: f32[2] = const [0.5, -0.5]
      %g: f32[2] = const [1.0, 1.0]
      %be: f32[2] = const [0.1, 0.3]
      %m: f32[2] = const [0.0, 0.0]
      %v: f32[2] = const [1.0, 1.0]
      %w2: f32[3,2,1,1] = const [[[[1.0]], [[3.0]]], [[[5.0]], [[7.0]]], [[[9.0]], [[11.0]]]]
      %c1: f32[1,2,4,4] = conv2d(%x, %w1, %b1) loc("conv1")
      %bn: f32[1,2,4,4] = batch_norm(%c1, %g, %be, %m, %v) loc("bn1")
      %r: f32[1,2,4,4] = relu(%bn)
      %c2: f32[1,3,4,4] = conv2d(%r, %w2) loc("conv2")
      return %c2
    }""")
    assert graph_diff(after, expected) is None
    assert stats["pruned_groups"] == 1 and stats["channels_removed"] == 2
    assert stats["channels_total"] == 4 and stats["refused"] == 2


def test_zeroing_the_filter_is_not_the_oracle_but_zeroing_at_the_sink_is(ir):
    """Why the oracle zeroes at the sinks: BN's beta survives a zeroed filter."""
    g = ir(CHAIN)
    pruned, plan, _ = prune(g, "prune-channels(ratio=0.5)")
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    filt = as_f64(g)
    w1, b1 = filt.constants["w1"], filt.constants["b1"]
    from shrinkc.passes.rewrite import replace_data

    w, b = w1.data.copy(), b1.data.copy()
    w[[1, 3]], b[[1, 3]] = 0.0, 0.0
    replace_data(w1, w)
    replace_data(b1, b)
    with torch.no_grad():
        got = run(as_f64(pruned), [x])[0]
        assert (got - run(filt, [x])[0]).abs().max() > 0.1
    assert_oracle(g, pruned, plan, [x.float()])


def test_ratio_zero_changes_nothing(ir):
    g = ir(CHAIN)
    after, plan, stats = prune(g, "prune-channels(ratio=0.0)")
    assert graph_diff(after, g) is None and plan.groups == []


# ============================================================================ plans
def test_plan_is_saved_loaded_and_reapplied(tmp_path):
    g, x = traced("concat")
    path = tmp_path / "plan.json"
    first, plan, _ = prune(g, f"prune-channels(ratio=0.5, save_plan='{path}')", [x])
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["groups"] and data["meta"]["criterion"] == "l1"
    again, plan2, _ = prune(g, f"prune-channels(plan='{path}')", [x])
    assert graph_diff(first, again) is None
    assert plan2.to_dict()["groups"] == plan.to_dict()["groups"]


def test_a_plan_for_another_graph_is_an_error(tmp_path):
    g, x = traced("concat")
    _, plan, _ = prune(g, "prune-channels(ratio=0.5)", [x])
    path = tmp_path / "plan.json"
    plan.save(path)
    other, y = traced("residual")
    with pytest.raises(PassError, match="plan"):
        prune(other, f"prune-channels(plan='{path}')", [y])


# ============================================================================ options
def test_options_are_checked():
    from shrinkc.passes import PipelineError, parse_pipeline

    with pytest.raises(PipelineError, match="at most one"):
        parse_pipeline("prune-channels(target_macs=0.5, max_error=0.1)")
    with pytest.raises(PipelineError, match="pattern=ratio"):
        parse_pipeline("prune-channels(overrides=['conv1'])")
    with pytest.raises(PipelineError, match="criterion"):
        parse_pipeline("prune-channels(criterion=l3)")


def test_overrides_protect_and_set_layers(reference_graphs):
    _, x, g = reference_graphs("vgg11_bn")
    _, plan, _ = prune(g, "prune-channels(ratio=0.5, overrides=['features.0=0', "
                          "'features.4=0.75'])", [x])
    by_layer = {gp.layers[0]: gp for gp in plan.groups}
    assert "features.0" not in by_layer
    gp = by_layer["features.4"]
    assert len(gp.keep) == gp.size - int(0.75 * gp.size)


@pytest.mark.parametrize("target", ["target_macs", "target_params"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_targets_are_reached_by_bisection(target, scope, reference_graphs):
    from shrinkc.passes.analyses.cost import summarize

    _, x, g = reference_graphs("resnet18")
    pruned, plan, stats = prune(g, f"prune-channels({target}=0.5, scope={scope})", [x])
    key = "macs" if target == "target_macs" else "params"
    frac = getattr(summarize(pruned), key) / getattr(summarize(g), key)
    assert 0.4 < frac <= 0.5, frac
    assert stats["target_reached"] == 1
    assert_oracle(g, pruned, plan, [x])


def test_sensitivity_policy_saves_data_and_plot(tmp_path, reference_graphs):
    _, x, g = reference_graphs("lenet5")
    png = tmp_path / "sens.png"
    ctx_art = {}
    c = PassContext(example_inputs=[x], artifacts=ctx_art)
    pruned = g.clone()
    PassManager(f"prune-channels(max_error=0.05, sensitivity_ratios=[0.25, 0.5, 0.75], "
                f"sensitivity_plot='{png}')", c).run(pruned)
    sens = ctx_art["prune-sensitivity"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = sens.ratios_for(0.05)
    for gp in ctx_art["prune-plan"].groups:
        row = next(r for r in sens.groups if r["id"] == gp.id)
        r = chosen[gp.id]
        assert r > 0 and row["errors"][sens.ratios.index(r)] <= 0.05
    assert_oracle(g, pruned, ctx_art["prune-plan"], [x])


# ============================================================================ CLI
def test_cli_explain(capsys, tmp_path):
    from shrinkc.tools.cli import main

    out = tmp_path / "p.shrk"
    code = main(["opt", "zoo:lenet5", "--passes", "prune-channels(ratio=0.5)", "--explain",
                 "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "channel groups of graph" in text and "graph output" in text
    assert "keeps 3 of 6" in text


# ============================================================================ property
class RandomNet:
    """A random conv net built in the IR from the coupling blocks (faster than tracing)."""

    def __init__(self, seed: int, channels: int = 4, side: int = 6):
        from shrinkc.ir.graph import Graph
        from shrinkc.ir.types import TensorType

        self.rng = np.random.default_rng(seed)
        self.g = Graph("random")
        self.x = self.g.add_input(TensorType("f32", (1, channels, side, side)), "x")

    def const(self, shape, name, scale=0.5, positive=False):
        a = self.rng.random(shape) + 0.5 if positive else self.rng.standard_normal(shape) * scale
        return self.g.add_constant(a.astype(np.float32), self.g.fresh_name(name))

    def op(self, op, *xs, **attrs):
        return self.g.add_node(op, list(xs), attrs).outputs

    def conv(self, x, cout, k=3, groups=1, bn=True):
        cin = x.shape[1]
        w = self.const((cout, cin // groups, k, k), "w", scale=1.0 / np.sqrt(cin * k * k / groups))
        [y] = self.op("conv2d", x, w, self.const((cout,), "b"), padding=(k // 2, k // 2),
                      groups=groups)
        if bn:
            [y] = self.op("batch_norm", y, self.const((cout,), "gamma", positive=True),
                          self.const((cout,), "beta"), self.const((cout,), "mean", 0.2),
                          self.const((cout,), "var", positive=True))
        return y

    def relu(self, x):
        return self.op("relu", x)[0]

    # ---------------------------------------------------------------- blocks
    def block(self, kind: str, x, width: int):
        c = x.shape[1]
        if kind == "cbr":
            return self.relu(self.conv(x, width))
        if kind == "residual":
            return self.relu(self.op("add", x, self.conv(self.relu(self.conv(x, width)), c))[0])
        if kind == "projection":
            [y] = self.op("add", self.conv(self.relu(self.conv(x, width)), width + 1),
                          self.conv(x, width + 1, k=1))
            return self.relu(y)
        if kind == "concat":
            return self.op("concat", x, self.relu(self.conv(x, width)), axis=1)[0]
        if kind in ("split", "swap") and c >= 2:
            a = c // 2 if kind == "swap" else int(self.rng.integers(1, c))
            p, q = self.op("split", x, axis=1, sizes=(a, c - a))
            if kind == "swap":
                return self.op("concat", q, p, axis=1)[0]
            return self.op("concat", self.relu(self.conv(p, width)), q, axis=1)[0]
        if kind == "depthwise":
            return self.relu(self.conv(x, c * int(self.rng.integers(1, 3)), groups=c))
        if kind == "grouped" and c % 2 == 0:
            return self.relu(self.conv(x, 2 * width, groups=2))
        if kind == "se":
            [s] = self.op("mean", x, axes=(2, 3))
            h = max(1, c // 2)
            [s] = self.op("linear", s, self.const((h, c), "fc1"), self.const((h,), "fc1b"))
            [s] = self.op("linear", self.relu(s), self.const((c, h), "fc2"), self.const((c,), "b"))
            [s] = self.op("reshape", self.op("sigmoid", s)[0], shape=(1, c, 1, 1))
            return self.op("mul", x, s)[0]
        if kind == "shuffle" and c % 2 == 0:
            s = x.shape
            [y] = self.op("reshape", x, shape=(1, 2, c // 2, s[2], s[3]))
            [y] = self.op("permute", y, perm=(0, 2, 1, 3, 4))
            return self.op("reshape", y, shape=s)[0]
        if kind == "channel_mean":
            [m] = self.op("mean", x, axes=(1,), keepdim=True)
            return self.op("mul", x, self.op("sigmoid", m)[0])[0]
        if kind == "slice" and c >= 2:
            return self.op("slice", x, axis=1, start=1, end=c)[0]
        return self.relu(self.conv(x, width))

    def finish(self, x, flatten: bool):
        if flatten:
            [x] = self.op("flatten", x, start_dim=1)
        else:
            [x] = self.op("flatten", self.op("adaptive_avg_pool2d", x, output_size=(1, 1))[0])
        [y] = self.op("linear", x, self.const((5, x.shape[1]), "head"), self.const((5,), "hb"))
        self.g.outputs = [y]
        return self.g


BLOCKS = ["cbr", "residual", "projection", "concat", "split", "swap", "depthwise", "grouped",
          "se", "shuffle", "channel_mean", "slice"]


@st.composite
def random_nets(draw):
    seed = draw(st.integers(0, 2 ** 16))
    net = RandomNet(seed, channels=draw(st.integers(2, 5)))
    x = net.relu(net.conv(net.x, draw(st.integers(3, 8))))
    for kind in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4)):
        x = net.block(kind, x, draw(st.integers(3, 8)))
    return net.finish(x, flatten=draw(st.booleans()))


@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(graph=random_nets(), ratio=st.floats(0.1, 0.9),
       criterion=st.sampled_from(["l1", "l2", "bn-scale", "taylor", "apoz", "random"]),
       scope=st.sampled_from(["local", "global"]), round_to=st.sampled_from([1, 2]))
def test_property_random_nets_are_pruned_exactly_or_refused(graph, ratio, criterion, scope,
                                                             round_to):
    from shrinkc.ir.interpreter import random_inputs

    x = random_inputs(graph, seed=3)
    pruned, plan, stats = prune(graph, f"prune-channels(ratio={ratio}, criterion={criterion}, "
                                       f"scope={scope}, round_to={round_to})", x)
    a = analyze_channels(graph)
    assert stats["prunable"] + stats["refused"] == len(a.groups)
    for grp in a.refused:
        assert grp.reasons and all(isinstance(r, str) and r for r in grp.reasons)
    assert all(a.group(gp.id).prunable for gp in plan.groups)
    assert_oracle(graph, pruned, plan, x)


# ============================================================================ ONNX light
def _light_model(name: str):
    """The ONNX ``light`` architecture with seeded random weights (tests/ir's helper)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "ir" / "test_onnx_conformance.py"
    spec = importlib.util.spec_from_file_location("onnx_conformance_for_prune", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.randomized_light_model(name)


@pytest.mark.parametrize("name", [
    "squeezenet", "shufflenet", "inception_v1",
    pytest.param("inception_v2", marks=pytest.mark.slow),  # 10-15 s each: import, prune,
    pytest.param("resnet50", marks=pytest.mark.slow),  # two float64 runs at 224 px, export
    pytest.param("densenet121", marks=pytest.mark.slow)])
def test_onnx_light_architectures(name):
    from shrinkc import load_onnx
    from shrinkc.backends.onnx import export_model, run_onnxruntime

    g = load_onnx(_light_model(name))
    x = torch.randn(*g.inputs[0].shape, generator=torch.Generator().manual_seed(0))
    pruned, plan, stats = prune(g, "prune-channels(ratio=0.3)", [x])
    assert stats["channels_removed"] > 0 and pruned.num_params < 0.9 * g.num_params
    assert_oracle(g, pruned, plan, [x])
    got = run_onnxruntime(export_model(pruned), [x.numpy()], threads=1)
    with torch.no_grad():
        assert_close(got, run(pruned, [x]), depth=pruned, msg="onnxruntime vs interpreter")


# ============================================================================ sdpa
def sdpa_block(ir, kv_heads: int = 4, scale: str = "none"):
    """qkv linear -> split -> heads -> scaled_dot_product_attention -> merge -> proj."""
    d = 4  # head dim; 4 query heads
    kv = kv_heads * d
    return ir(f"""
    graph "attn" (%x: f32[1,5,6]) {{
      %win: f32[16,6] = const #1
      %wqkv: f32[{16 + 2 * kv},16] = const #2
      %bqkv: f32[{16 + 2 * kv}] = const #3
      %wo: f32[16,16] = const #4
      %wh: f32[3,16] = const #5
      %t: f32[1,5,16] = linear(%x, %win) loc("inp")
      %qkv: f32[1,5,{16 + 2 * kv}] = linear(%t, %wqkv, %bqkv) loc("qkv")
      %q0: f32[1,5,16], %k0: f32[1,5,{kv}], %v0: f32[1,5,{kv}] = split(%qkv) {{axis=2, sizes=[16, {kv}, {kv}]}}
      %q1: f32[1,5,4,4] = reshape(%q0) {{shape=[1, 5, 4, 4]}}
      %k1: f32[1,5,{kv_heads},4] = reshape(%k0) {{shape=[1, 5, {kv_heads}, 4]}}
      %v1: f32[1,5,{kv_heads},4] = reshape(%v0) {{shape=[1, 5, {kv_heads}, 4]}}
      %q: f32[1,4,5,4] = permute(%q1) {{perm=[0, 2, 1, 3]}}
      %k: f32[1,{kv_heads},5,4] = permute(%k1) {{perm=[0, 2, 1, 3]}}
      %v: f32[1,{kv_heads},5,4] = permute(%v1) {{perm=[0, 2, 1, 3]}}
      %a: f32[1,4,5,4] = scaled_dot_product_attention(%q, %k, %v) {{scale={scale}}}
      %a1: f32[1,5,4,4] = permute(%a) {{perm=[0, 2, 1, 3]}}
      %a2: f32[1,5,16] = reshape(%a1) {{shape=[1, 5, 16]}}
      %o: f32[1,5,16] = linear(%a2, %wo) loc("proj")
      %m: f32[1,16] = mean(%o) {{axes=[1]}}
      %y: f32[1,3] = linear(%m, %wh) loc("head")
      return %y
    }}""")


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_sdpa_prunes_whole_heads(ir, kv_heads):
    g = sdpa_block(ir, kv_heads)
    a = analyze_channels(g)
    heads = next(grp for grp in a.groups if grp.anchor == Dim("qkv", 2))
    assert heads.prunable and heads.size == kv_heads
    # a k/v head takes its 4 / kv_heads query heads along
    assert heads.index[Dim("q", 1)].shape == (kv_heads, 4 // kv_heads)
    x = torch.randn(1, 5, 6)
    pruned, plan, _ = prune(g, "prune-channels(ratio=0.5)", [x])
    sdpa = next(n for n in pruned.nodes if n.op == "scaled_dot_product_attention")
    assert sdpa.inputs[0].shape[1] == 2 and sdpa.inputs[1].shape[1] == kv_heads // 2
    assert_oracle(g, pruned, plan, [x])


def test_sdpa_head_dim_is_a_sink_but_the_heads_carry_the_reshape(ir):
    """With an explicit scale the q·k dim is a contraction (a sink): a channel group, refused
    because the reshape into heads lets only the head axis shrink; heads are still pruned."""
    g = sdpa_block(ir, 4, scale="0.5")
    a = analyze_channels(g)
    qk = next(grp for grp in a.groups if Dim("q", 3) in grp.members)
    assert [s.node.op for s in qk.sinks] == ["scaled_dot_product_attention"] * 2
    assert not qk.prunable and any("other than the one that can shrink" in r for r in qk.reasons)
    x = torch.randn(1, 5, 6)
    pruned, plan, stats = prune(g, "prune-channels(ratio=0.5)", [x])
    assert stats["channels_removed"] > 0
    assert_oracle(g, pruned, plan, [x])


def test_vit_through_onnx_prunes_heads_of_the_fused_attention(reference_graphs, tmp_path):
    """ONNX import fuses the hand-written attention into scaled_dot_product_attention; the
    heads are pruned through it."""
    from shrinkc import load_onnx, to_onnx

    _, x, traced_vit = reference_graphs("vit")
    to_onnx(traced_vit, tmp_path / "vit.onnx")
    g = load_onnx(tmp_path / "vit.onnx")
    assert any(n.op == "scaled_dot_product_attention" for n in g.nodes)
    pruned, plan, _ = prune(g, "prune-channels(ratio=0.5)", [x])
    heads = [n.inputs[0].shape[1] for n in pruned.nodes if n.op == "scaled_dot_product_attention"]
    assert heads and all(h == 2 for h in heads)  # 4 heads -> 2 in every block
    assert_oracle(g, pruned, plan, [x])
