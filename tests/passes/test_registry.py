from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
from shrinkc.passes import (
    PASSES,
    Pass,
    PassResult,
    PipelineError,
    canonical,
    option,
    parse_pipeline,
    register_pass,
    unregister_pass,
)


@dataclass
class Toy(Pass):
    """A pass with one option of every kind."""

    exact = False
    ratio: float = option(0.5, gt=0.0, lt=1.0, help="fraction")
    rank: int = option(4, ge=1)
    criterion: Literal["l1", "l2"] = "l1"
    note: str = ""
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None
    flag: bool = False

    def run(self, graph, ctx) -> PassResult:
        return PassResult(False)


@pytest.fixture
def toy():
    register_pass("toy")(Toy)
    yield Toy
    unregister_pass("toy")


def test_builtin_passes_are_registered():
    assert {"fold-bn", "dce", "fold-constants", "remove-identity"} <= set(PASSES)
    assert all(PASSES[n].name == n for n in PASSES)


def test_parse_values_are_python_literals_and_bare_words(toy):
    [p] = parse_pipeline("toy(ratio=0.25, rank=2, criterion=l2, note='a,b(c)', sizes=(3, 4), "
                         "limit=None, flag=true)")
    assert p.options == {"ratio": 0.25, "rank": 2, "criterion": "l2", "note": "a,b(c)",
                         "sizes": (3, 4), "limit": None, "flag": True}
    assert isinstance(p, Toy) and type(p.criterion) is str
    [q] = parse_pipeline("toy(limit=7, flag=False)")
    assert q.limit == 7 and q.flag is False and q.ratio == 0.5
    [f] = parse_pipeline("fold-constants(max_growth=2)")  # an int is a float too
    assert f.max_growth == 2.0 and isinstance(f.max_growth, float)


def test_bare_words_may_be_keywords_or_hyphenated(toy):
    # prune-channels(scope=global, criterion=bn-scale): neither is a Python expression
    [p] = parse_pipeline("toy(note=global, criterion=l2, sizes=(3,))")
    assert p.note == "global" and p.criterion == "l2" and p.sizes == (3,)
    [q] = parse_pipeline("toy(note = bn-scale)")
    assert q.note == "bn-scale" and canonical(canonical("toy(note=in)")) == canonical("toy(note=in)")
    with pytest.raises(PipelineError, match="given twice"):
        parse_pipeline("toy(note=global, note='x')")


def test_canonical_spells_out_every_option_and_parses_back(toy):
    text = canonical("fold-bn , toy(rank=3),dce,fold-constants(max_growth=2)")
    assert text == ('fold-bn,toy(ratio=0.5, rank=3, criterion="l1", note="", sizes=[1, 2], '
                    'limit=None, flag=False),dce,fold-constants(max_growth=2.0)')
    assert canonical(text) == text
    again = parse_pipeline(text)
    assert [p.options for p in again] == [p.options for p in parse_pipeline(text)]
    assert canonical("") == "" and parse_pipeline("  ") == []


def test_unknown_pass_lists_every_pass():
    with pytest.raises(PipelineError) as e:
        parse_pipeline("fold-bn,fold-bm")
    msg = str(e.value)
    assert "unknown pass 'fold-bm'" in msg and "did you mean 'fold-bn'?" in msg
    for name in PASSES:
        assert name in msg


def test_unknown_option_lists_the_pass_options_with_types_and_defaults(toy):
    with pytest.raises(PipelineError) as e:
        parse_pipeline("toy(rnak=2)")
    msg = str(e.value)
    assert "pass 'toy' has no option 'rnak' (did you mean 'rank'?)" in msg
    assert "ratio: float = 0.5 (> 0.0, < 1.0)" in msg and "rank: int = 4 (>= 1)" in msg
    assert "criterion: 'l1' | 'l2' = \"l1\"" in msg and "limit: int | None = None" in msg
    with pytest.raises(PipelineError, match="pass 'dce' has no option 'x'; it takes no options"):
        parse_pipeline("dce(x=1)")


@pytest.mark.parametrize("text, message", [
    ("toy(rank=2.5)", "pass 'toy' option rank: expected int, got 2.5 (float)"),
    ("toy(rank=0)", "pass 'toy' option rank: must be >= 1, got 0"),
    ("toy(ratio=1.0)", "pass 'toy' option ratio: must be < 1.0, got 1.0"),
    ("toy(ratio=abc)", "pass 'toy' option ratio: expected float, got 'abc' (bare word)"),
    ("toy(criterion=l3)", "pass 'toy' option criterion: expected 'l1' | 'l2', got 'l3'"),
    ("toy(flag=1)", "pass 'toy' option flag: expected bool, got 1 (int)"),
    ("toy(sizes=3)", "pass 'toy' option sizes: expected tuple[int, ...], got 3 (int)"),
    ("toy(rank=len(x))", "pass 'toy' option rank: len(x) is not a Python literal"),
    ("toy(2)", "pass 'toy': options are given by name (name=value), got (2)"),
    ("toy(rank=)", "pass 'toy': cannot parse options (rank=)"),
    ("toy(rank=1, rank=2)", "pass 'toy': option rank is given twice"),
    ("fold-bn,,dce", "empty pass name at column 9 of pipeline 'fold-bn,,dce'"),
    ("fold-bn(", "unclosed '(' in pipeline 'fold-bn('"),
    ("fold-bn)", "unbalanced ')' at column 8"),
    ("toy(note='x)", "unterminated string in pipeline"),
    ("fold bn", "cannot parse 'fold bn' in pipeline 'fold bn'"),
])
def test_bad_pipelines_say_what_is_wrong(text, message, toy):
    with pytest.raises(PipelineError) as e:
        parse_pipeline(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)  # one line


def test_options_are_checked_when_constructed_directly(toy):
    with pytest.raises(PipelineError, match="option rank: must be >= 1"):
        Toy(rank=0)
    assert Toy(rank=2).spec().startswith("toy(ratio=0.5, rank=2,")


def test_cross_option_check(toy):
    @register_pass("toy-pair")
    @dataclass
    class ToyPair(Pass):
        """Two options that must go together."""

        exact = True
        lo: int = 0
        hi: int = 1

        def check(self):
            return None if self.lo < self.hi else f"lo={self.lo} must be below hi={self.hi}"

        def run(self, graph, ctx):
            return PassResult(False)

    try:
        with pytest.raises(PipelineError, match="pass 'toy-pair': lo=3 must be below hi=1"):
            parse_pipeline("toy-pair(lo=3)")
    finally:
        unregister_pass("toy-pair")


def _make(cls_name: str, doc: str | None = "Does a thing.", exact=True,
          dataclass_=True, base=Pass, run=True):
    ns = {"__doc__": doc, "__annotations__": {}}
    if exact is not None:
        ns["exact"] = exact
    if run:
        ns["run"] = lambda self, graph, ctx: PassResult(False)
    cls = type(cls_name, (base,), ns)
    return dataclass(cls) if dataclass_ else cls


@pytest.mark.parametrize("name, kwargs, message", [
    ("Bad_Name", {"cls_name": "BadName"}, "kebab-case"),
    ("my-pass", {"cls_name": "Other"}, "CamelCase of the pass name \\(MyPass\\)"),
    ("my-pass", {"cls_name": "MyPass", "doc": None}, "needs a docstring"),
    ("my-pass", {"cls_name": "MyPass", "exact": None}, "exact = True/False"),
    ("my-pass", {"cls_name": "MyPass", "exact": "yes"}, "exact = True/False"),
    ("my-pass", {"cls_name": "MyPass", "dataclass_": False}, "@dataclass"),
    ("my-pass", {"cls_name": "MyPass", "base": object}, "derives from shrinkc.passes.Pass"),
    ("my-pass", {"cls_name": "MyPass", "run": False}, "defines run"),
    ("dce", {"cls_name": "Dce"}, "already registered by shrinkc.passes.dce.Dce"),
])
def test_register_pass_checks_the_conventions(name, kwargs, message):
    cls = _make(**kwargs)
    with pytest.raises(TypeError, match=message):
        register_pass(name)(cls)
    assert PASSES.get(name) is not cls
