from shrinkc.passes.analyses.cost import CostSummary, node_costs, summarize

GRAPH = """
graph "g" (%x: f32[1,3,8,8]) {
  %w: f32[4,3,3,3] = const #1
  %b: f32[4] = const [0.0, 0.0, 0.0, 0.0]
  %unused: f32[2] = const [1.0, 2.0]
  %conv: f32[1,4,6,6] = conv2d(%x, %w, %b)
  %relu: f32[1,4,6,6] = relu(%conv)
  %conv2: f32[1,4,4,4] = conv2d(%relu, %w, %b) {groups=1}
  return %conv2
}
""".replace("%conv2: f32[1,4,4,4] = conv2d(%relu, %w, %b) {groups=1}",
            "%conv2: f32[1,4,4,4] = conv2d(%relu, %w2)").replace(
    "%unused", "%w2: f32[4,4,3,3] = const #2\n  %unused")


def test_node_costs_charge_each_weight_once(ir):
    costs = node_costs(ir(GRAPH))
    assert list(costs) == ["conv", "relu", "conv2"]
    assert costs["conv"].macs == 4 * 6 * 6 * 3 * 3 * 3 and costs["conv"].params == 108 + 4
    assert costs["relu"].macs == 0 and costs["relu"].params == 0
    assert costs["conv2"].macs == 4 * 4 * 4 * 4 * 3 * 3 and costs["conv2"].params == 144
    assert costs["conv"].activation_bytes == 4 * 6 * 6 * 4


def test_summary_and_delta(ir):
    g = ir(GRAPH)
    s = summarize(g)
    assert s.nodes == 3
    assert s.params == 108 + 4 + 144 + 2  # every constant, used or not
    assert s.param_bytes == 4 * s.params
    assert s.macs == 3888 + 2304 and s.flops >= 2 * s.macs
    g.dce()
    d = summarize(g).delta(s)
    assert d["params"] == -2 and d["nodes"] == 0 and d["macs"] == 0
    assert set(d) == set(CostSummary.__dataclass_fields__)
