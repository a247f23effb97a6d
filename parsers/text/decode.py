"""Typed field columns from the argument text of one event, vectorised per printed form.

For each event in the catalogue, the rows are matched against its printed forms newest first
(``str.extract_groups`` over the column, one pass per form, each pass only over the rows no
earlier form took), then ``trace-cmd report -R``'s ``field=value`` form. Rows no form matches
are returned as failures for the caller to repair or report. Events outside the catalogue keep
their raw arguments in a ``text`` column, so nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.text.catalog import POLARS_TYPES, EventSpec
from kvmtrace.parsers.text.printf import (
    RAW_FORM,
    Compiled,
    ascii_classes,
    choice_expr,
    flags_expr,
    number_expr,
    pointer_expr,
)

_SCRATCH = pl.Int64()


@dataclass
class Decoded:
    """One event's decoded rows (``line_no`` + field columns), the line numbers that failed,
    and the printed forms (era labels) that matched, which tell a reader the kernel's era."""

    rows: pl.DataFrame
    failed: pl.Series
    forms: tuple[str, ...] = ()


def _types(spec: EventSpec) -> dict[str, pl.DataType]:
    return _field_types(spec.fields)


@cache
def _field_types(fields: tuple[tuple[str, str], ...]) -> dict[str, pl.DataType]:
    return {n: POLARS_TYPES[t] for n, t in fields}


def _convert(spec: EventSpec, c: Compiled) -> list[pl.Expr]:
    types = _types(spec)
    exprs = [number_expr(g, base, types.get(g, _SCRATCH)).alias(g) for g, base in c.numbers.items()]
    exprs += [choice_expr(g, o, types.get(g, _SCRATCH)).alias(g) for g, o in c.choices.items()]
    exprs += [flags_expr(g, n, types.get(g, _SCRATCH)).alias(g) for g, n in c.flags.items()]
    exprs += [pl.col(g) for g in c.texts]
    exprs += [pointer_expr(g).cast(types.get(g, pl.UInt64)).alias(g) for g in c.pointers]
    return exprs


def _raw_regex(spec: EventSpec) -> str:
    """``trace-cmd report -R``: ``name=value`` per field in format-file order (a string field last)."""
    parts = []
    for name, t in spec.fields:
        value = ".*" if t == "str" else r"\S*"
        parts.append(f"{name}=(?P<{name}>{value})")
    # Without plugins, trace-cmd report prints an event whose print fmt libtraceevent cannot
    # parse (the page-class statement expressions) the same way, after this marker.
    return r"^(?:\[FAILED TO PARSE\] )?" + " ".join(parts) + "$"


def _raw_exprs(spec: EventSpec) -> list[pl.Expr]:
    """-R prints each number with the conversion the print fmt uses for it, else in decimal."""
    types = _types(spec)
    bases: dict[str, int] = {}
    for form in () if spec.raw_decimal else reversed(spec.forms):
        bases.update(form.compiled.numbers)
    exprs = []
    for name, t in spec.fields:
        col = pl.col(name)
        if t == "str":
            exprs.append(col)
            continue
        hexed = col.str.starts_with("0x") | pl.lit(bases.get(name, 10) == 16)
        as_hex = col.str.strip_prefix("0x").str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        as_dec = col.str.to_integer(base=10, dtype=pl.Int64 if t.startswith("s") else pl.UInt64, strict=False)
        if t.startswith("s"):
            as_hex = as_hex.cast(pl.Int64, wrap_numerical=True)
        exprs.append(pl.when(hexed).then(as_hex).otherwise(as_dec).cast(types[name], strict=False).alias(name))
    return exprs


def _scratch(spec: EventSpec) -> dict[str, pl.DataType]:
    """Helper columns of every form (``_level``, ``_reason``...), so finishing hooks always see them."""
    out: dict[str, pl.DataType] = {}
    for form in spec.forms:
        c = form.compiled
        out.update({g: _SCRATCH for g in (*c.numbers, *c.choices, *c.flags) if g.startswith("_")})
        out.update({g: pl.String() for g in c.texts if g.startswith("_")})
    return out


def _apply(df: pl.DataFrame, regex: str, exprs: tuple[pl.Expr, ...]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows of ``df`` matching ``regex`` (converted) and the rows left over."""
    # One capture pass; the empty sentinel group is "" on a match and null otherwise.
    got = df.with_columns(pl.col("args").str.extract_groups("(?P<_hit>)" + regex).alias("_g")).unnest("_g")
    missed = got["_hit"].null_count()
    if missed == 0:  # the usual case: one form takes every row, no filtering
        return got.select("line_no", *exprs), df.clear()
    if missed == df.height:  # a newer form than the text's: no row to copy out
        return got.clear().select("line_no", *exprs), df
    hit = pl.col("_hit").is_not_null()
    rest = got.filter(~hit).select("line_no", "args")
    return got.filter(hit).select("line_no", *exprs), rest


@dataclass(frozen=True)
class _Pass:
    """One printed form: its era label, regex and the expressions that make a matched row a
    row of the decoded frame (every column of :func:`_columns`, in order, typed)."""

    era: str
    regex: str
    exprs: tuple[pl.Expr, ...]


def _columns(spec: EventSpec) -> dict[str, pl.DataType]:
    """The decoded frame's columns after ``line_no``: the table's own when there is no finishing
    hook, else also the scratch columns the hook reads and ``_form``."""
    out = {**_types(spec), **_field_types(spec.derived)}
    return out if spec.finish is None else {**_types(spec), **_scratch(spec), "_form": pl.String()}


def _full(era: str, exprs: list[pl.Expr], columns: dict[str, pl.DataType]) -> tuple[pl.Expr, ...]:
    """``exprs`` completed to every column (null where this form does not print it), so one
    ``select`` per pass builds the rows: fewer polars calls per event and chunk, which cost as
    much as the regex on the rarer events."""
    by_name = {e.meta.output_name(): e for e in exprs}
    by_name["_form"] = pl.lit(era, pl.String())  # which form each row matched
    return tuple((by_name[c] if c in by_name else pl.lit(None)).cast(t).alias(c) for c, t in columns.items())


#: spec id -> (spec, its passes): building the expressions is pure Python and cost as much as
#: a chunk's regex passes, so each event's are built once (the spec is kept so its id stays its own).
_PASSES: dict[tuple[int, bool], tuple[EventSpec, list[_Pass]]] = {}


def _passes(spec: EventSpec, ascii_only: bool) -> list[_Pass]:
    """Each printed form's pass (its quick one first), then ``trace-cmd report -R``'s."""
    cached = _PASSES.get((id(spec), ascii_only))
    if cached is None or cached[0] is not spec:
        forms = []
        for f in spec.forms:
            exprs = _convert(spec, f.compiled)
            # The quick regex captures the same groups, so the form's expressions convert them.
            forms += [(f.era, f.quick.regex, exprs)] if f.quick is not None else []
            forms.append((f.era, f.compiled.regex, exprs))
        forms.append((RAW_FORM, _raw_regex(spec), _raw_exprs(spec)))
        columns = _columns(spec)
        passes = [_Pass(era, ascii_classes(regex) if ascii_only else regex, _full(era, exprs, columns))
                  for era, regex, exprs in forms]
        cached = _PASSES[(id(spec), ascii_only)] = (spec, passes)
    return cached[1]


def decode_event(spec: EventSpec, rows: pl.DataFrame, ascii_only: bool = False) -> Decoded:
    """Decode ``rows`` (``line_no``, ``args``) of one catalogued event; ``ascii_only`` says
    the arguments are known to be ASCII (faster regexes, same matches)."""
    pieces: list[pl.DataFrame] = []
    seen: list[str] = []
    rest = rows.select("line_no", "args")
    for p in _passes(spec, ascii_only):
        if rest.height == 0:
            break
        got, rest = _apply(rest, p.regex, p.exprs)
        if got.height:
            pieces.append(got)
            seen += [p.era] if p.era not in seen else []
    columns = _columns(spec)
    if len(pieces) == 1:
        df = pieces[0]
    elif pieces:
        df = pl.concat(pieces, how="vertical_relaxed")
    else:
        df = pl.DataFrame(schema={"line_no": pl.Int64, **columns})
    if spec.finish is not None:
        if df.height:
            df = spec.finish(df)
        out = {**_types(spec), **_field_types(spec.derived)}
        df = df.select("line_no",
                       *[(pl.col(n) if n in df.columns else pl.lit(None)).cast(t).alias(n) for n, t in out.items()])
    return Decoded(df, rest["line_no"], tuple(seen))


def decode_unknown(rows: pl.DataFrame) -> Decoded:
    """An event kvmtrace has no decoder for: its raw argument text, column ``text``.

    The text is copied out: the split's strings may be views into the chunk's bytes, which
    must not outlive the chunk.
    """
    text = pl.Series("text", pc.cast(rows["args"].to_arrow(), pa.large_string()))
    return Decoded(pl.DataFrame({"line_no": rows["line_no"], "text": text}), pl.Series("line_no", [], pl.Int64))
