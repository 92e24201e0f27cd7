"""Issue 25 item 7: checking and binding a pattern with many parameters is linear in them.

No wall clock: parameter names are a str subclass that counts comparisons. A membership
test in a list or tuple compares a name with every earlier one (quadratic); a set or dict
compares it with at most a few."""
import dataclasses

from spattn_dsl import loads
from spattn_dsl.frontend.parser import parse
from spattn_dsl.ir import nodes as N
from spattn_dsl.ir.resolve import bind, check

PARAMS = 2000


class Name(str):
    compared = 0

    def __eq__(self, other):
        Name.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def _source(count: int) -> str:
    params = ", ".join(f"a{i} = {i}" for i in range(count))
    given = ", ".join(f"a{i} = {i + 1}" for i in range(0, count, 2))
    return f"pattern p({params}) {{ causal }}\npattern two {{ p({given}) }}\n"


def _counted(decls):
    """The declarations with every parameter and keyword name a ``Name``."""
    out = []
    for decl in decls:
        params = tuple(dataclasses.replace(p, name=Name(p.name)) for p in decl.params)
        body = decl.body
        if isinstance(body, N.Ref):
            body = dataclasses.replace(body, kwargs=tuple((Name(k), v) for k, v in body.kwargs))
        out.append(dataclasses.replace(decl, params=params, body=body))
    return out


def test_check_compares_names_linearly():
    decls = _counted(parse(_source(PARAMS), "many.spattn"))
    Name.compared = 0
    table = check(decls)
    assert Name.compared < 20 * PARAMS  # quadratic was about PARAMS**2 / 2 = 2,000,000
    Name.compared = 0
    bind("two", {}, table)
    bind("p", {"a7": 2}, table)
    assert Name.compared < 20 * PARAMS


def test_many_parameters_bind_to_the_right_values():
    program = loads(_source(PARAMS))
    assert program.pattern("two").mask(3).tolist() == program.pattern("p").mask(3).tolist()
    bad = _source(PARAMS).replace("a3 = 3", "a3 = 3, a3 = 4")
    try:
        loads(bad)
    except ValueError as error:
        assert "duplicate parameter 'a3'" in str(error)
    else:
        raise AssertionError("a duplicate among many parameters was not found")
