"""The JSON report's own encoder (``jsonout._dumps``) against the standard library's.

The report is written with ``_dumps`` for speed; its contract is that the text is exactly
``json.dumps(value, indent=2, default=str)``, indented by the depth it sits at. These tests
hold it to that on values of every kind JSON has, and on the kinds that must go to the standard
library (bools, enums, non-string keys, objects given to ``default=str``).
"""

from __future__ import annotations

import enum
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmtrace.report.jsonout import Each, _dumps, iter_json


class Colour(enum.IntEnum):
    RED = 1


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from([Colour.RED, Decimal("1.5"), Path("a/b"), "é\n\"\\\t\x00", ""]))
keys = st.text(max_size=6) | st.integers(-5, 5) | st.booleans() | st.none() | st.floats(allow_nan=False)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(keys, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=600, deadline=None)
@given(values, st.integers(0, 4))
def test_every_value_encodes_as_the_standard_library_does(value, depth):
    indent = "  " * depth
    expect = json.dumps(value, indent=2, default=str).replace("\n", "\n" + indent)
    assert _dumps(value, indent) == expect


def test_nan_and_infinities_use_javascripts_names():
    assert _dumps([float("nan"), float("inf"), -float("inf"), -0.0, 1e300], "") == json.dumps(
        [float("nan"), float("inf"), -float("inf"), -0.0, 1e300], indent=2)


def test_rows_of_an_each_are_encoded_whole_and_equal_the_standard_library():
    rows = [{"page": i, "role_text": "L4 indirect", "ok": i % 2 == 0, "gfn": None, "after": [{"seq": i}]}
            for i in range(50)]
    doc = {"removals": Each(lambda: iter(rows)), "n": 1}
    assert "".join(iter_json(doc)) == json.dumps({"removals": rows, "n": 1}, indent=2) + "\n"


def test_an_each_inside_a_row_is_refused_not_printed_as_text():
    doc = {"rows": Each(lambda: iter([{"inner": Each(lambda: iter([1]))}]))}
    with pytest.raises(TypeError, match="holds an Each"):
        "".join(iter_json(doc))
