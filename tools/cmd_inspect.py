"""``shrinkc inspect MODEL``: the per-layer table (name, op, output shape, params, MACs) and
totals, the text IR with ``--ir``, or a picture with ``--dot`` (Graphviz DOT; SVG / PNG
when Graphviz's ``dot`` program is installed). A model with pruned or shared (encoded) weights also
gets its storage in bytes per stage: dense, pruned (CSR), shared, Huffman (``--storage``
prints it for any model)."""

from __future__ import annotations

from ..ir.cost import graph_cost
from .load import load_model, parse_shape
from .table import human, human_bytes, render


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer table of a model: shapes, params, MACs",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL",
                   help="zoo:NAME, package.module:factory, FILE.shrk(z) or FILE.onnx")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32")
    p.add_argument("--ir", action="store_true", help="print the text IR instead of the table")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for a zoo:/factory model's weights (default 0)")
    p.add_argument("--all", action="store_true",
                   help="list every node (default: only nodes with params or MACs)")
    p.add_argument("--storage", action="store_true",
                   help="bytes per storage stage (dense, pruned CSR, shared, Huffman)")
    p.add_argument("--dot", nargs="?", const="-", metavar="FILE",
                   help="the graph as Graphviz DOT (op, shape and loc per node) on stdout, or "
                        "into FILE: .dot, or .svg / .png / .pdf rendered with Graphviz's "
                        "'dot' program (apt install graphviz)")
    p.set_defaults(func=run)


def inspect_table(graph, all_nodes: bool = False) -> str:
    gc = graph_cost(graph)
    rows = []
    for nc in gc.nodes:
        c, n = nc.cost, nc.node
        if not all_nodes and not (c.params or n.op in ("conv2d", "conv_transpose2d", "linear",
                                                       "matmul")):
            continue
        rows.append([n.loc or n.name, n.op, ", ".join(str(o.type) for o in n.outputs),
                     c.params, human(c.macs)])
    t = gc.total
    table = render(["layer", "op", "output", "params", "MACs"], rows, align="lllrr")
    totals = (f"\n{graph.name}: {len(graph.nodes)} nodes, {gc.params:,} params "
              f"({human_bytes(gc.param_bytes)}), {human(t.macs)} MACs, {human(t.flops)} FLOPs")
    return table + totals


def run(args) -> int:
    from ..ir import dot

    if args.dot not in (None, "-"):
        dot.check_target(args.dot)  # before the model is loaded
    g = load_model(args.model, parse_shape(args.input_shape), seed=args.seed)
    if args.dot is not None:
        text = dot.to_dot(g)
        if args.dot == "-":
            print(text, end="")
        else:
            dot.render(text, args.dot)
            print(f"wrote {args.dot}")
        return 0
    print(str(g) if args.ir else inspect_table(g, args.all))
    if not args.ir and (args.storage or any(v.encoding is not None
                                            for v in g.constants.values())):
        from ..ir.compress import storage_report

        print("\nstorage (bytes per stage):\n" + storage_report(g).text())
    return 0
