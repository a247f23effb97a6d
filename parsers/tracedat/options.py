"""Interpret the options that matter for decoding and for :class:`kvmtrace.parsers.schema.TraceInfo`."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from kvmtrace.parsers.tracedat.constants import Option
from kvmtrace.parsers.tracedat.layout import RawOption
from kvmtrace.parsers.tracedat.timeshift import TimeShift, parse_time_shift


@dataclass(frozen=True)
class Tsc2Nsec:
    """TSC2NSEC option: trace-cmd converts with ``(ts * mult) >> shift`` (its offset is not added)."""

    mult: int
    shift: int
    offset: int


@dataclass(frozen=True)
class Options:
    """Decoded options of one file."""

    uname: str | None = None
    version: str | None = None
    clock: str | None = None
    #: DATE (µs, as hex) × 1000 plus OFFSET: what trace-cmd report adds to every timestamp.
    ts_offset: int = 0
    tsc2nsec: Tsc2Nsec | None = None
    time_shift: TimeShift | None = None  # guest file: host/guest clock correction


def _text(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def decode_options(options: list[RawOption], big_endian: bool) -> Options:
    e = ">" if big_endian else "<"
    fields: dict[str, object] = {}
    ts_offset = 0
    for opt in options:
        if opt.id == Option.UNAME:
            fields["uname"] = _text(opt.payload)
        elif opt.id == Option.VERSION:
            fields["version"] = _text(opt.payload)
        elif opt.id == Option.TRACECLOCK:
            m = re.search(r"\[([^\]]+)\]", _text(opt.payload))
            if m:
                fields["clock"] = m.group(1)
        elif opt.id == Option.DATE:
            text = _text(opt.payload)
            try:
                ts_offset += int(text, 0) * 1000
            except ValueError:
                pass
        elif opt.id == Option.OFFSET:
            try:
                ts_offset += int(_text(opt.payload), 0)
            except ValueError:
                pass
        elif opt.id == Option.TSC2NSEC and len(opt.payload) >= 16:
            mult, shift, off = struct.unpack(e + "IIQ", opt.payload[:16])
            fields["tsc2nsec"] = Tsc2Nsec(mult, shift, off)
        elif opt.id == Option.TIME_SHIFT and len(opt.payload) >= 16:
            fields["time_shift"] = parse_time_shift(opt.payload, big_endian)
    return Options(ts_offset=ts_offset, **fields)  # type: ignore[arg-type]
