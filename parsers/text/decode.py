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

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers.text import native
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
from kvmtrace.parsers.text.program import Program

_SCRATCH = pl.Int64()
_SIGNED = (pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64())


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
class _Matcher:
    """A form's compiled matcher (:class:`Program`): its code, each slot's group and what it
    holds (``int64``, ``uint64``, a text's ``start`` or ``length``), and the expressions that
    make its rows decoded rows."""

    code: bytes
    slots: tuple[tuple[str, str], ...]
    exprs: tuple[pl.Expr, ...]


@dataclass(frozen=True)
class _Pass:
    """One printed form: its era label, regex and the expressions that make a matched row a
    row of the decoded frame (every column of :func:`_columns`, in order, typed), and its
    compiled matcher where it has one (used on ASCII text, where it matches as the regex does)."""

    era: str
    regex: str
    exprs: tuple[pl.Expr, ...]
    matcher: _Matcher | None = None


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


#: (spec id, ASCII text, compiled passes) -> (spec, its passes): building the expressions is pure
#: Python and cost as much as a chunk's regex passes, so each event's are built once (the spec is
#: kept so its id stays its own).
_PASSES: dict[tuple[int, bool, bool], tuple[EventSpec, list[_Pass]]] = {}


def _matcher(spec: EventSpec, program: Program, era: str, columns: dict[str, pl.DataType]) -> _Matcher:
    """The matcher of a form: numbers parsed as :func:`number_expr` parses them (int64 for a
    signed column, else uint64), alternatives as their value (int64), texts cut from the
    arguments; then cast as the regex pass casts."""
    types = _types(spec)
    signed = {g: what != "number" or types.get(g, _SCRATCH) in _SIGNED for g, what in program.slots}
    slots = tuple((g, what if what in ("start", "length") else "int64" if signed[g] else "uint64")
                  for g, what in program.slots)
    exprs = [pl.col(g) if what == "start" else pl.col(g).cast(types.get(g, _SCRATCH), strict=False).alias(g)
             for g, what in program.slots if what != "length"]
    return _Matcher(program.code(signed), slots, _full(era, exprs, columns))


def _passes(spec: EventSpec, ascii_only: bool) -> list[_Pass]:
    """Each printed form's pass (its quick one first), then ``trace-cmd report -R``'s."""
    key = (id(spec), ascii_only, native.COMPILED)
    cached = _PASSES.get(key)
    if cached is None or cached[0] is not spec:
        columns = _columns(spec)
        passes = []
        for f in spec.forms:
            exprs = _full(f.era, _convert(spec, f.compiled), columns)
            # The quick regex captures the same groups, so the form's expressions convert them.
            for c in (f.quick, f.compiled):
                if c is None:
                    continue
                program = c.program if ascii_only and native.COMPILED else None
                matcher = None if program is None else _matcher(spec, program, f.era, columns)
                passes.append(_Pass(f.era, _regex(c.regex, ascii_only), exprs, matcher))
        passes.append(_Pass(RAW_FORM, _regex(_raw_regex(spec), ascii_only), _full(RAW_FORM, _raw_exprs(spec), columns)))
        cached = _PASSES[key] = (spec, passes)
    return cached[1]


def _regex(regex: str, ascii_only: bool) -> str:
    return ascii_classes(regex) if ascii_only else regex


def _match(df: pl.DataFrame, m: _Matcher) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`_apply` by the compiled matcher: the rows it matches (converted) and the rest."""
    args = df["args"].to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: offsets and bytes
    n, buffers = len(args), args.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[args.offset : args.offset + n + 1]
    hit = np.empty(n, dtype=np.uint8)
    values = np.empty((len(m.slots), n), dtype=np.int64)
    valid = np.empty((len(m.slots), n), dtype=np.uint8)
    hits = native.chunk.match_form(m.code, offsets, buffers[2] or b"", hit, values, valid)
    rows = None if hits == n else np.flatnonzero(hit)
    got = df if rows is None else df[rows]
    columns: list[pl.Series | pl.Expr] = []
    for k, (group, what) in enumerate(m.slots):
        v, ok = (values[k], valid[k]) if rows is None else (values[k][rows], valid[k][rows])
        if what == "start":  # ASCII text: byte offsets are character offsets
            length = values[k + 1] if rows is None else values[k + 1][rows]
            columns.append(pl.col("args").str.slice(pl.Series(v), pl.Series(length)).alias(group))
        elif what != "length":
            column = pl.Series(group, v if what == "int64" else v.view(np.uint64))
            columns.append(column if ok.all() else column.scatter(np.flatnonzero(ok == 0), None))
    got = got.select("line_no", *columns).select("line_no", *m.exprs)
    return got, (df.clear() if rows is None else df if hits == 0 else df.filter(pl.Series(hit == 0)))


def decode_event(spec: EventSpec, rows: pl.DataFrame, ascii_only: bool = False) -> Decoded:
    """Decode ``rows`` (``line_no``, ``args``) of one catalogued event; ``ascii_only`` says
    the arguments are known to be ASCII (faster regexes, same matches)."""
    pieces: list[pl.DataFrame] = []
    seen: list[str] = []
    rest = rows.select("line_no", "args")
    for p in _passes(spec, ascii_only):
        if rest.height == 0:
            break
        if p.matcher is None or rest["args"].has_nulls():  # (a null is no text: the regex leaves it)
            got, rest = _apply(rest, p.regex, p.exprs)
        else:
            got, rest = _match(rest, p.matcher)
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
