"""Closed forms are true: over a grid of parameters (0, 1, wider than n, n = 1, ragged n)
every formula's value equals the computed figure of the same report and brute force."""
import itertools
import math

import pytest
import sympy as sp

from spattn_dsl import loads
from spattn_dsl.analysis import analyze
from spattn_dsl.analysis.formulas import evaluate

from .oracle import Oracle

LENGTHS = (1, 2, 6, 19, 26)
LAYERS = 3

# (pattern text, parameter names, values per parameter); every family here has formulas.
FAMILIES = [
    ("causal & window(w)", "w", [(1,), (2,), (5,), (40,)]),
    ("band(b, a)", "b a", list(itertools.product((0, 1, 40), repeat=2))),
    ("window(w) | causal", "w", [(1,), (3,)]),
    ("dense", "", [()]),
    ("causal", "", [()]),
    ("band(b, a) | global(first = g)", "b a g",
     [(b, a, g) for b in (0, 2) for a in (0, 3) for g in (0, 1, 40)]),
    ("causal & (window(w) | sink(g))", "w g", list(itertools.product((1, 3, 40), (0, 1, 40)))),
    ("causal & (window(w) | global(first = g))", "w g", [(1, 0), (3, 2), (2, 40)]),
    ("global(first = g)", "g", [(0,), (1,), (3,), (40,)]),
    ("causal & sink(g)", "g", [(0,), (2,), (40,)]),
    ("stride(s)", "s", [(1,), (2,), (3,), (40,)]),
    ("causal & stride(s)", "s", [(1,), (2,), (3,), (40,)]),
    ("dilated(w, d)", "w d", list(itertools.product((1, 2, 3), (1, 2, 3)))),
    ("causal & dilated(w, d)", "w d", [(1, 1), (3, 1), (2, 2), (3, 3)]),
    ("chunk(l)", "l", [(1,), (2,), (5,), (40,)]),
    ("causal & chunk(l)", "l", [(1,), (3,), (40,)]),
    ("causal & (chunk(l) | summary(l, c))", "l c", [(1, 1), (4, 1), (4, 4), (5, 2), (40, 3)]),
    ("heads { causal & window(w); causal & stride(s) }", "w s",
     [(1, 1), (2, 2), (4, 4), (5, 3), (40, 7), (3, 40)]),
    ("causal & (window(w) | stride(s))", "w s", [(4, 2), (6, 6), (2, 1)]),
]


def _cases() -> list:
    return list(_each_case())


def _each_case():
    for text, names, grid in FAMILIES:
        for values in grid:
            params = dict(zip(names.split(), values))
            ident = text.split("{")[0][:24].strip() + "-" + "-".join(map(str, values))
            yield pytest.param(text, params, id=ident.replace(" ", ""))


def _pattern(text, params):
    signature = ", ".join(f"{name} = {value}" for name, value in params.items())
    return loads(f"pattern p({signature}) {{ {text} }}").pattern("p")


def _computed(report, figure, layer):
    if figure in ("diameter", "reach_to_first"):
        return getattr(report, figure)
    record = report.layers[layer - 1]
    return {"reach": record.reach, "receptive_field_last": record.rf_last,
            "span_middle": record.span_middle}[figure]


def _brute(oracle, states, figure, layer):
    if figure == "diameter":
        return oracle.diameter()
    if figure == "reach_to_first":
        return oracle.reach_to_first()
    key = {"receptive_field_last": "rf_last"}.get(figure, figure)
    return oracle.figures(states[layer - 1])[key]


@pytest.mark.parametrize("text,params", _cases())
def test_formulas_equal_the_computed_figures_and_brute_force(text, params):
    pattern = _pattern(text, params)
    stride_wider = "window" in text and params.get("s", 0) > params.get("w", 0)
    for n in LENGTHS:
        report = analyze(pattern, n, layers=LAYERS, method="tokens")
        if stride_wider:  # s > w: no form is known, so none is given
            assert report.formulas == {}
            continue
        assert {"diameter", "reach_to_first", "reach"} <= set(report.formulas), (text, n)
        oracle = Oracle([pattern], n)
        states = oracle.states(LAYERS)
        for figure, expr in report.formulas.items():
            layers = range(1, LAYERS + 1) if _depends_on_layers(expr) else [LAYERS]
            for layer in layers:
                value = evaluate(expr, pattern.params, n, layer)
                where = (figure, n, layer, str(expr))
                assert value == _computed(report, figure, layer), where
                assert value == _brute(oracle, states, figure, layer), where
            assert report.formula_values[figure] == evaluate(expr, pattern.params, n, LAYERS)


def _depends_on_layers(expr):
    return sp.Symbol("L", integer=True, positive=True) in expr.free_symbols


def test_zero_parameters_do_not_crash_and_match():
    # band(0, 3) used to fail with "'zoo' is not comparable"; global(first = 0) printed 2.
    band = analyze(_pattern("band(b, a)", {"b": 0, "a": 3}), 40)
    assert band.formula_values["diameter"] == band.diameter == math.inf
    longformer = analyze(_pattern("band(h, h) | global(first = g)", {"h": 5, "g": 0}), 46)
    assert longformer.formula_values["diameter"] == longformer.diameter == 9


def test_unbounded_sides_are_not_zero():
    report = analyze(_pattern("window(w) | causal", {"w": 3}), 20)
    assert report.formula_values["diameter"] == report.diameter == 10
    assert report.formula_values["reach_to_first"] == 1


def test_sparse_transformer_formulas_read_as_the_paper_says():
    # Child et al. 2019, section 4.2: strided and fixed attention connect any two positions in
    # two steps (p = 2).
    strided = analyze(_pattern("heads { causal & window(l); causal & stride(l) }", {"l": 8}),
                      200)
    fixed = analyze(_pattern("causal & (chunk(l) | summary(l, c))", {"l": 16, "c": 2}), 200)
    for report in (strided, fixed):
        assert report.formula_values["diameter"] == report.diameter == 2
    assert "l" in str(strided.formulas["receptive_field_last"])


def test_dilation_alone_never_covers():
    report = analyze(_pattern("dilated(w, d)", {"w": 4, "d": 2}), 300)
    assert report.formulas["diameter"].subs({sp.Symbol("d", integer=True, nonnegative=True): 2,
                                              sp.Symbol("n", integer=True, positive=True): 300}
                                             ) == sp.oo
    assert report.diameter == math.inf


def test_no_formula_where_none_is_known():
    for text in ("prefix(4) | causal", "causal & (window(3) | random(2))",
                 "blocks(4) { band(1, 1) }", "band(2, 2) | sink(3)",
                 "causal & where(q - k < 4)"):
        assert analyze(loads(f"pattern p {{ {text} }}").pattern("p"), 64).formulas == {}, text


def test_parameters_defined_from_n_evaluate_exactly():
    program = loads("pattern p(l = isqrt(n)) { heads { causal & window(l); causal & stride(l) } }\n"
                    "pattern r(w = log2(n)) { causal & window(w) }")
    for name in ("p", "r"):
        for n in (50, 200):
            report = analyze(program.pattern(name), n)
            assert report.formula_values["diameter"] == report.diameter, (name, n)
            assert report.formula_values["reach"] == report.layers[-1].reach, (name, n)


def test_a_stride_within_its_window_states_the_condition():
    report = analyze(_pattern("causal & (window(w) | stride(s))", {"w": 8, "s": 5}), 200)
    assert report.formula_conditions == ["s <= w"] and report.diameter == 2
    assert "s <= w" in str(report)
