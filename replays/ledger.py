"""The zap ledger: for each memslot delete or move, what the kernel zapped, what it kept and why.

This is what a maintainer reconstructs by hand from a trace when a memslot change misbehaves
(the 2019 per-memslot zap thread took weeks of it, docs/threads.md §1). It is computed from a
finished replay (its memslot timeline, shadow-page book, SPTE journal and memslot summary) plus
the trace's seq->ts column and its zap-all events; it decides nothing new, it lines the replay's facts up per change.

Per change (one row of :data:`REMOVALS_SCHEMA`):

* the **slot instance**: slot id and the seq of the create that made it (QEMU reuses ids for
  different BARs, so ``2@11`` and ``2@9443`` are different slots);
* the **policy** the kernel ran: ``zap_all`` when the ioctl thread emitted
  ``kvm_mmu_zap_all_fast`` inside the change's window (``KVM_X86_QUIRK_SLOT_ZAP_ALL``, the
  default), else ``zap_slot``; and the **rule** that policy applies;
* **pages** (:data:`PAGES_SCHEMA`): every page zapped inside the window, and every page alive when
  the change took effect (built before its line, not zapped before its window) that the change
  concerns but the kernel kept, with the reason:

  - zap-slot (6.12+, ``kvm_mmu_zap_memslot_pages_and_flush``): only valid pages *with gPTEs*
    (indirect, not passthrough) whose gfn lies in the slot are zapped
    (``for_each_gfn_valid_sp_with_gptes``). A direct or passthrough page over the range holds no
    guest PTEs and is kept by the rule; its leaf SPTEs into the range are dropped through the
    rmaps (``kvm_unmap_gfn_range``), which no tracepoint shows. An obsolete page is skipped by
    the walk (it is already on its way out after a fast zap). A page whose gfn lies outside the
    slot but whose leaf SPTEs map into it keeps existing; only those SPTEs are dropped. A page
    the rule names that is still alive at the change's line is the ``memslot_zap_miss`` finding.
  - zap-all: ``kvm_mmu_zap_all_fast`` makes every page obsolete and ``kvm_zap_obsolete_pages``
    zaps them; a root that a vCPU still references is zapped but stays allocated (invalid)
    until the vCPU drops it. A page made obsolete but not zapped before the line is kept with
    the seq at which it was zapped, if ever.

* **leaf SPTEs removed** (:data:`SPTES_SCHEMA`): per how the replay knows it: traced
  (``kvm_tdp_mmu_spte_changed``), or inferred, with the evidence the journal names (the traced
  zap of the owning page, the untraced per-slot rmap zap the rule implies);
* the **cost**: events and nanoseconds from the window's start to the line;
* **where the line came from** (trace marker, QEMU log line N) and how it was placed, with the
  placement's confidence (a QEMU log's lines are matched to the kernel's response).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from kvmtrace.parsers import spilled
from kvmtrace.parsers.memory import release_freed_memory
from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays import sweep
from kvmtrace.replays.detectors.zap_rules import whatif_rule, zap_rule_mask
from kvmtrace.replays.inputs import seq_pid, zap_all_event
from kvmtrace.replays.journal import Parts
from kvmtrace.replays.profiles import KernelProfile, ept, profile_for
from kvmtrace.replays.results import ReplayResult
from kvmtrace.replays.stream import numpy_column

REMOVALS_SCHEMA = pa.schema([
    pa.field("change", pa.int32(), nullable=False),  # row of the memslot timeline
    pa.field("seq", pa.int64(), nullable=False),  # the QEMU line
    pa.field("ts", pa.int64()),
    pa.field("window_start", pa.int64(), nullable=False),
    pa.field("anchor", pa.string()),  # what window_start rests on (memslots.py)
    pa.field("pid", pa.int32()),  # the ioctl thread
    pa.field("slot", pa.int32(), nullable=False),  # as_id << 16 | id
    pa.field("slot_created_seq", pa.int64()),  # null: the slot predates the trace
    pa.field("kind", pa.string(), nullable=False),  # delete | move | recreate
    pa.field("base_gfn", pa.uint64(), nullable=False),  # the removed range
    pa.field("npages", pa.uint64(), nullable=False),
    pa.field("new_base_gfn", pa.uint64()),  # move / recreate: where the slot went
    pa.field("policy", pa.string(), nullable=False),  # zap_all | zap_slot
    pa.field("zap_all_seq", pa.int64()),
    pa.field("rule", pa.string(), nullable=False),
    pa.field("pages_zapped", pa.int64(), nullable=False),
    pa.field("pages_kept", pa.int64(), nullable=False),
    pa.field("kept_missed", pa.int64(), nullable=False),  # the rule names them: memslot_zap_miss
    pa.field("leaf_sptes_removed", pa.int64(), nullable=False),
    pa.field("leaf_sptes_traced", pa.int64(), nullable=False),
    pa.field("window_events", pa.int64(), nullable=False),
    pa.field("window_ns", pa.int64()),
    # where the change's line came from and how it was put on the trace (the memslot timeline's)
    pa.field("source", pa.string()),
    pa.field("placement", pa.string()),
    pa.field("confidence", pa.float64()),
])

PAGES_SCHEMA = pa.schema([
    pa.field("change", pa.int32(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),  # the change's line
    pa.field("page", pa.int64(), nullable=False),  # id in the replay's shadow_pages table
    pa.field("gfn", pa.uint64(), nullable=False),
    pa.field("level", pa.int8(), nullable=False),
    pa.field("role", pa.uint32(), nullable=False),
    pa.field("role_text", pa.string(), nullable=False),  # e.g. "L1 indirect q0 wux 8-byte"
    pa.field("direct", pa.bool_(), nullable=False),
    pa.field("covers_first", pa.uint64()),  # direct pages: the gfns their entries map
    pa.field("covers_last", pa.uint64()),
    pa.field("fate", pa.string(), nullable=False),  # zapped | kept
    pa.field("reason", pa.string(), nullable=False),
    pa.field("zap_seq", pa.int64()),
])

SPTES_SCHEMA = pa.schema([
    pa.field("change", pa.int32(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("how", pa.string(), nullable=False),  # traced | inferred
    pa.field("evidence", pa.string(), nullable=False),  # the journal's reason for the removal
    pa.field("in_range", pa.bool_(), nullable=False),  # maps a gfn of the removed range
    pa.field("sptes", pa.int64(), nullable=False),
    pa.field("gfn_first", pa.uint64()),
    pa.field("gfn_last", pa.uint64()),
])

#: ``access_str`` of arch/x86/kvm/mmu/mmutrace.h, indexed by the role's 3-bit access field.
ACCESS = ("---", "--x", "w--", "w-x", "-u-", "-ux", "wu-", "wux")

KEPT_BY_RULE = ("direct: holds no guest PTEs, kept by the zap-slot rule (its leaf SPTEs into the range are "
                "unmapped through the rmaps, untraced)")
KEPT_PASSTHROUGH = "passthrough: holds no guest PTEs, kept by the zap-slot rule"
KEPT_OBSOLETE = "obsolete generation: skipped by the per-slot walk (already on its way out after a fast zap)"
KEPT_OUTSIDE = ("outside the range: its gfn is not in the slot; only its leaf SPTEs into the slot are dropped "
                "(rmap, untraced)")
KEPT_MISSED = "not allowed: the zap-slot rule must zap it (memslot_zap_miss)"
KEPT_TDP = "TDP page table: direct, kept; its leaf SPTEs in the range are zapped (traced)"
KEPT_TDP_ROOT = ("the TDP MMU frees an invalidated root without kvm_mmu_prepare_zap_page (the removal of its "
                 "entries is traced: see the leaf SPTE rows)")


@dataclass(frozen=True)
class ZapLedger:
    """The three ledger tables; ``change`` links them."""

    removals: pa.Table  # REMOVALS_SCHEMA
    pages: pa.Table  # PAGES_SCHEMA
    sptes: pa.Table  # SPTES_SCHEMA


def profile_of(replay: ReplayResult) -> KernelProfile:
    """The profile the replay used: every profile name starts with the first kernel of its era
    (``"6.12+ (role F, ...)"``), which :func:`profile_for` maps back to the same era; the EPT
    flavour of it ends in ``" EPT"`` (:func:`kvmtrace.replays.profiles.ept`)."""
    m = re.match(r"\d+\.\d+", replay.profile)
    base = profile_for(m.group() if m else None)
    return ept(base) if replay.profile.endswith(" EPT") else base


def role_text(row: dict[str, Any]) -> str:
    """A role word the way a maintainer reads it: ``L1 indirect q0 wux 8-byte`` (level, direct or
    not, quadrant, access as mmutrace.h prints it, guest PTE size), then any unusual bits."""
    four = row.get("has_4_byte_gpte")
    if four is None and row.get("cr4_pae") is not None:
        four = 0 if row["cr4_pae"] else 1
    words = [f"L{row['level']}", "direct" if row["direct"] else "indirect", f"q{row.get('quadrant') or 0}",
             ACCESS[row["access"] & 7] if row.get("access") is not None else "?",
             "4-byte" if four else "8-byte"]
    words += [name for name, on in (("passthrough", row.get("passthrough")), ("invalid", row.get("invalid")),
                                     ("guest_mode", row.get("guest_mode")), ("smm", row.get("smm")),
                                     ("!cr0_wp", row.get("cr0_wp") == 0)) if on]
    return " ".join(words)


def _covers(gfn: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Number of gfns the entries of a direct page at ``level`` map: 512 ** level."""
    n: np.ndarray = np.left_shift(np.uint64(1), np.uint64(9) * level.astype(np.uint64))
    return n


#: SPTE changes :func:`_leaf_owners` and :func:`_removed_leaves` read at a time.
ROWS_PER_WINDOW = 1 << 18


@dataclass(frozen=True)
class _OwnedLeaves:
    """SPTE addresses whose last change so far made them a present leaf with an owning page:
    what :func:`_leaf_owners` carries from one window of the journal to the next (at most one row
    per SPTE, so as many as the guest has live leaves, however long the trace)."""

    key: np.ndarray  # uint64 SPTE address
    seq: np.ndarray  # int64 seq of that change
    gfn: np.ndarray  # uint64
    page: np.ndarray  # int64 owning page id

    @classmethod
    def none(cls) -> _OwnedLeaves:
        return cls(np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.int64))


def _leaf_owners(changes: pa.Table, questions: list[tuple[int, int, int]],
                 read: Callable[[], None] = lambda: None) -> dict[tuple[int, int, int], np.ndarray]:
    """Shadow MMU: for each ``(seq, lo, hi)``, the pages (ascending ids) owning a present leaf
    SPTE into [lo, hi) just before ``seq`` (the change's line: the per-slot rmap zap the model
    infers sits at the line itself).

    A change row is its SPTE's state from its seq until the next change of the same SPTE
    address (``key``); its last change may map another gfn: then the entry was overwritten.
    The journal (in seq order) is read a window of :data:`ROWS_PER_WINDOW` rows at a time,
    carrying the SPTEs that are an owned present leaf after it (:class:`_OwnedLeaves`); a
    question is answered in the window after which every change before its seq has been read.
    So the working set is a window and the guest's live leaves, not the trace: sorting every
    change by SPTE (even a share of the SPTEs at a time, with answers kept for every owned row)
    grew with the trace and was the report's peak (733 MiB at 14 M changes, 52 M events; the step
    peaks at ~545 MiB there now).
    ``read()`` gives back the pages of the table (on disk when long) after each window.

    The answers are kept as :class:`~kvmtrace.parsers.spilled.KeptParts` keeps arrays (on disk
    from a size on), each a slice of them: an array per question held in the process grew with
    the memslot changes times the pages a slot holds (+200 MiB through the ledger at 109 M events)."""
    asked = sorted(set(questions))
    times = np.asarray([at for at, _lo, _hi in asked], np.int64)
    answers = spilled.KeptParts("the zap ledger's leaf owners")
    bounds: list[int] = [0]  # where each question's answer starts in ``answers``, in ``asked`` order
    carried, answered, n = _OwnedLeaves.none(), 0, changes.num_rows
    for first in range(0, n, ROWS_PER_WINDOW):
        window = changes.slice(first, ROWS_PER_WINDOW)
        # every change before a seq up to the next window's first has been read after this one
        bound = int(changes.column("seq")[first + ROWS_PER_WINDOW].as_py()) if first + ROWS_PER_WINDOW < n \
            else np.iinfo(np.int64).max
        state, states = _codes(window, "state")
        owned = np.isin(state, _indices(states, ("present",))) & ~_nulls(window.column("page"))
        seq = np.concatenate((carried.seq, numpy_column(window, "seq", np.int64)))
        key = np.concatenate((carried.key, numpy_column(window, "key")))
        until = np.full(len(seq), np.iinfo(np.int64).max, dtype=np.int64)
        _next_of_same(seq, key, until)  # a carried row (one per key) comes before its key's rows here
        rows = np.concatenate((np.arange(len(carried.seq)), len(carried.seq) + np.flatnonzero(owned)))
        gfn = np.concatenate((carried.gfn, numpy_column(window, "gfn")[owned]))
        page = np.concatenate((carried.page, numpy_column(window, "page", np.int64)[owned]))
        done = int(np.searchsorted(times, bound, side="right"))
        alive = sweep.alive_at(seq[rows], until[rows], times[answered:done].tolist())
        for at, lo, hi in asked[answered:done]:
            live = alive[at]
            owners = np.unique(page[live[(gfn[live] >= lo) & (gfn[live] < hi)]]).astype(np.int64, copy=False)
            answers.append({"page": owners})
            bounds.append(bounds[-1] + len(owners))
        answered = done
        still = until[rows] == np.iinfo(np.int64).max
        carried = _OwnedLeaves(key[rows[still]], seq[rows[still]], gfn[still], page[still])
        read()
    bounds += [bounds[-1]] * (len(asked) + 1 - len(bounds))  # an empty journal has no window: no owners
    owners = (answers.arrays() or {"page": np.empty(0, np.int64)})["page"]
    return {q: owners[a:z] for q, a, z in zip(asked, bounds, bounds[1:])}


def _next_of_same(seq: np.ndarray, key: np.ndarray, until: np.ndarray) -> None:
    """Per row (rows in seq order), the seq of the next row of the same ``key`` into ``until``
    (left as it is for a key's last row)."""
    by_key = np.argsort(key, kind="stable")  # each key's rows stay in seq order
    same = key[by_key[1:]] == key[by_key[:-1]]
    until[by_key[:-1][same]] = seq[by_key[1:][same]]


def _nulls(column: pa.ChunkedArray) -> np.ndarray:
    """A column's null mask as one numpy array."""
    if not column.null_count:
        return np.zeros(len(column), bool)
    return np.concatenate([c.is_null().to_numpy(zero_copy_only=False) for c in column.chunks] or [np.zeros(0, bool)])


#: The decoded role fields :func:`role_text` reads (those a page table has).
ROLE_TEXT_FIELDS = ("level", "direct", "quadrant", "access", "has_4_byte_gpte", "cr4_pae", "passthrough", "invalid",
                    "guest_mode", "smm", "cr0_wp")


def role_texts(t: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Each page's :func:`role_text`, as a code per page into a list of texts: computed once per
    distinct combination of the fields it reads (a VM's pages have a few dozen), not from a dict
    per page (~470 bytes each, held through the ledger; a long zap-all trace rebuilds the VM's
    pages at every change)."""
    names = [f for f in ROLE_TEXT_FIELDS if f in t.column_names]
    if not t.num_rows:
        return np.empty(0, np.int64), []
    # nulls (bits the input does not carry) as -1: every field is a small non-negative value
    def key(f: str) -> np.ndarray:
        return np.asarray(t.column(f).cast(pa.int64()).fill_null(-1).to_numpy(), np.int64)

    # the fields packed into one integer, the first field highest: one sort of integers instead
    # of rows (~1 s for 228 000 pages); role fields are a few bits each (rows if a value is not).
    # A field's column at a time: all of them at once were 88 bytes a page (570 000 pages at
    # 52 M events), kept by the allocator through the rest of the ledger
    highest = [pc.max(t.column(f)).as_py() for f in names]  # None: all null
    widths = [int((-1 if m is None else m) + 1).bit_length() for m in highest]
    if sum(widths) > 62:
        rows, codes = np.unique(np.stack([key(f) for f in names], axis=1), axis=0, return_inverse=True)
        combos = [row.tolist() for row in rows]
    else:
        packed = np.zeros(t.num_rows, np.int64)
        for f, w in zip(names, widths):
            packed <<= w
            packed |= key(f) + 1
        codes_packed, codes = np.unique(packed, return_inverse=True)
        del packed
        combos = [_unpacked(int(c), widths) for c in codes_packed]
    texts = [role_text({f: (None if v < 0 else v) for f, v in zip(names, combo)}) for combo in combos]
    return codes.reshape(-1), texts


def _unpacked(value: int, widths: list[int]) -> list[int]:
    """The fields :func:`role_texts` packed (each stored plus one, the first highest)."""
    out = []
    for w in reversed(widths):
        out.append((value & ((1 << w) - 1)) - 1)
        value >>= w
    return out[::-1]


@dataclass(frozen=True)
class _Pages:
    """The replay's shadow-page book as arrays (-1: no seq), with each page's role text."""

    gfn: np.ndarray
    role: np.ndarray
    level: np.ndarray
    direct: np.ndarray
    passthrough: np.ndarray
    first_seq: np.ndarray
    zap: np.ndarray
    obsolete: np.ndarray
    root_count: np.ndarray | None = None
    text: np.ndarray | None = None  # code into ``texts``
    texts: tuple[str, ...] = ()

    @classmethod
    def of(cls, t: pa.Table) -> _Pages:
        def seqs(name: str) -> np.ndarray:
            return np.asarray(t.column(name).fill_null(-1).to_numpy(), dtype=np.int64)

        def flag(name: str) -> np.ndarray:
            return t.column(name).fill_null(0).to_numpy().astype(bool) if name in t.column_names \
                else np.zeros(t.num_rows, bool)

        text, texts = role_texts(t)
        return cls(t.column("gfn").to_numpy().astype(np.uint64), t.column("role").to_numpy().astype(np.uint64),
                   t.column("level").to_numpy().astype(np.uint64), flag("direct"), flag("passthrough"),
                   seqs("first_seq"), seqs("zap_seq"), seqs("obsolete_seq"),
                   np.asarray(t.column("root_count").fill_null(0).to_numpy(), np.int64), text, tuple(texts))


def _rule(za: int | None, tdp: bool, profile: KernelProfile) -> str:
    if za is not None:
        return ("zap-all (KVM_X86_QUIRK_SLOT_ZAP_ALL): kvm_mmu_zap_all_fast makes every page obsolete, "
                "kvm_zap_obsolete_pages zaps them")
    if tdp:
        return "TDP MMU: leaf SPTEs of the slot zapped (kvm_tdp_mmu_unmap_gfn_range); page tables kept"
    return whatif_rule(profile).label()


def _fates(pg: _Pages, c: dict[str, Any], za: int | None, tdp: bool, profile: KernelProfile,
           owners: np.ndarray, pages: np.ndarray) -> tuple[dict[int, str], set[int]]:
    """page -> reason, for every page zapped in the change's window and every page the change
    concerns but the kernel kept; and the zapped pages. ``pages`` (ascending ids) holds at least
    every page zapped in the window or alive when the change took effect (:func:`_candidates`);
    ``owners`` the pages owning a leaf SPTE into the range (:func:`_leaf_owners`)."""
    ws, line, lo, n = c["window_start"], c["seq"], c["old_base_gfn"], c["old_npages"]
    hi = lo + n
    gfn, zap = pg.gfn[pages], pg.zap[pages]
    zapped = (zap >= ws) & (zap <= line)
    # alive when the change took effect: built before its line (a window that starts at the
    # thread's previous line spans vCPU work too) and not zapped before the window
    alive = (pg.first_seq[pages] < line) & ((zap < 0) | (zap >= ws))
    in_range = (gfn >= np.uint64(lo)) & (gfn < np.uint64(hi))
    direct = pg.direct[pages]
    owning = np.isin(pages, owners)
    covers = direct & (gfn < np.uint64(hi)) & (gfn + _covers(gfn, pg.level[pages]) > np.uint64(lo))
    must = zap_rule_mask(profile, gfn, pg.role[pages], lo, n) if len(pages) and not tdp else np.zeros(len(pages), bool)
    fate: dict[int, str] = {}
    for j in np.flatnonzero(zapped).tolist():
        p = int(pages[j])
        if za is not None:
            why = "zapped after the fast zap made it obsolete"
        elif must[j]:
            why = "zapped by the rule: " + {"gptes": "gfn in the slot, holds guest PTEs",
                                            "gfn_2019": "sp->gfn is a gfn of the slot"}.get(
                whatif_rule(profile).name, "gfn in the slot's range at its level")
        else:
            why = "zapped inside the window, not by the slot rule"
        if pg.root_count is not None and pg.root_count[p] > 0:
            why += "; a root still referenced by a vCPU: marked invalid, freed when the vCPU drops it"
        fate[p] = why
    for j in np.flatnonzero(alive & ~zapped).tolist():
        p = int(pages[j])
        if za is not None:
            if pg.obsolete[p] == za:
                fate[p] = f"obsolete generation: made obsolete at seq {za}, " + (
                    f"zapped at seq {pg.zap[p]}" if pg.zap[p] >= 0 else KEPT_TDP_ROOT if tdp
                    else "still alive at the end of the trace")
        elif tdp:
            if covers[j]:
                fate[p] = KEPT_TDP
        elif 0 <= pg.obsolete[p] < ws and (in_range[j] or covers[j]):
            fate[p] = KEPT_OBSOLETE
        elif must[j]:
            fate[p] = KEPT_MISSED
        elif covers[j] or (in_range[j] and direct[j]):
            fate[p] = KEPT_BY_RULE
        elif in_range[j] and pg.passthrough[p]:
            fate[p] = KEPT_PASSTHROUGH
        elif owning[j]:
            fate[p] = KEPT_OUTSIDE
    return fate, {int(p) for p in pages[zapped]}


def _candidates(pg: _Pages, windows: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """For each window ``(start, line)``: the pages (ascending ids) alive at its start, built
    inside it, or zapped inside it; one sweep over time instead of a mask over every page per
    change (the page book grows with the trace: every zap-all rebuilds the VM's pages)."""
    forever = np.iinfo(np.int64).max
    alive = sweep.alive_at(pg.first_seq, np.where(pg.zap < 0, forever, pg.zap), [ws for ws, _ in windows])
    by_first = np.argsort(pg.first_seq, kind="stable")
    first = pg.first_seq[by_first]
    by_zap = np.argsort(pg.zap, kind="stable")
    zaps = pg.zap[by_zap]
    out = {}
    for ws, line in windows:
        built = by_first[np.searchsorted(first, ws, side="left"):np.searchsorted(first, line, side="left")]
        zapped = by_zap[np.searchsorted(zaps, ws, side="left"):np.searchsorted(zaps, line, side="right")]
        out[(ws, line)] = np.unique(np.concatenate((alive[ws], built, zapped)))
    return out


#: One group of leaf SPTEs a change removed: how the replay knows it, the reason, whether they map
#: the removed range, their count and first and last gfn.
_Removed = tuple[str, str, bool, int, int, int]


#: Rows of changes' windows :func:`_removed_leaves` groups at once in a window of the journal: a
#: zap-all window holds every leaf of the VM.
WINDOW_ROWS = 1 << 20


def _removed_leaves(changes: pa.Table, asked: list[tuple[int, int, int, int, bool]],
                    tdp: bool, read: Callable[[], None] = lambda: None) -> list[list[_Removed]]:
    """Per change ``(window start, line, lo, hi, zap-all)``, the leaf SPTEs it removed, grouped by
    how the replay knows it: under zap-all everything removed in the window; under zap-slot the
    leaves into the range and those of the pages it zapped (a vCPU replacing an MMIO SPTE
    elsewhere in the window is not its doing).

    The journal (in seq order) is read :data:`ROWS_PER_WINDOW` rows at a time, and in each the
    rows of the changes' windows that meet it are grouped a batch of changes at a time
    (:data:`WINDOW_ROWS` rows), each group's count and gfn bounds added to what earlier windows
    found. Why: a few polars calls per change cost more than the rows on a long trace with
    thousands of deletes; all windows at once were ~400 MiB on a 20 M-event churn recording; and
    the codes and the removals of the whole journal were a column of every change each, ~300 MiB
    at 14 M changes. ``state`` and ``reason`` are read as their dictionary codes (as strings they
    were a column of every removal each). ``read()`` gives back the pages of the table (on disk
    when long) after each window."""
    out: list[list[_Removed]] = [[] for _ in asked]
    if not asked:
        return out
    ws, line, lo, hi, zap_all = (np.asarray(col) for col in zip(*asked))
    ws, line = ws.astype(np.int64), line.astype(np.int64)
    found: dict[tuple[int, str, str, bool], list[int]] = {}  # -> [sptes, first gfn, last gfn]
    for first in range(0, changes.num_rows, ROWS_PER_WINDOW):
        window = changes.slice(first, ROWS_PER_WINDOW)
        seq = numpy_column(window, "seq", np.int64)
        meets = np.flatnonzero((ws <= seq[-1]) & (line >= seq[0]))
        if len(meets):
            _removed_in(window, seq, meets, (ws, line, lo, hi, zap_all), tdp, found)
        read()
    # within a change: traced before inferred, reasons in order, in-range groups first
    for (k, how, why, into), (count, g0, g1) in sorted(found.items(), key=lambda g: (g[0][0], g[0][1] != "traced",
                                                                                     g[0][2], not g[0][3])):
        out[k].append((how, why, into, count, g0, g1))
    return out


def _removed_in(window: pa.Table, seq: np.ndarray, meets: np.ndarray, asked: tuple[np.ndarray, ...], tdp: bool,
                found: dict[tuple[int, str, str, bool], list[int]]) -> None:
    """:func:`_removed_leaves` over one window of the journal (``seq``: its seqs): the removals
    of the changes ``meets`` (``asked``'s columns' rows whose windows meet it) added to ``found``."""
    ws, line, lo, hi, zap_all = asked
    state, states = _codes(window, "state")
    reason, reasons = _codes(window, "reason")
    kept = np.asarray([not r.startswith("page table removed") for r in reasons], bool)
    idx = np.flatnonzero(np.isin(state, _indices(states, ("zapped", "zapped_inferred"))) & kept[reason])
    at = np.searchsorted(seq[idx], ws[meets], side="left")
    counts = np.maximum(np.searchsorted(seq[idx], line[meets], side="right") - at, 0)
    owning_code = _indices(reasons, ("owning page zapped",))
    inferred_code = _indices(states, ("zapped_inferred",))
    gfns = numpy_column(window, "gfn")
    for batch in _batches(counts, WINDOW_ROWS):
        total = int(counts[batch].sum())
        rows = idx[np.repeat(at[batch] - np.cumsum(counts[batch]) + counts[batch], counts[batch]) + np.arange(total)]
        change = np.repeat(meets[batch], counts[batch])
        gfn = gfns[rows]
        into = (gfn >= lo.astype(np.uint64)[change]) & (gfn < hi.astype(np.uint64)[change])
        chosen = zap_all.astype(bool)[change] | np.isin(reason[rows], owning_code) | into
        traced = tdp & ~np.isin(state[rows], inferred_code)
        rows_of = pl.DataFrame({"_k": change, "traced": traced, "reason": reason[rows], "in_range": into,
                                "gfn": gfn}).filter(pl.Series(chosen))
        groups = rows_of.group_by("_k", "traced", "reason", "in_range").agg(
            pl.len().alias("sptes"), pl.col("gfn").min().alias("gfn_first"), pl.col("gfn").max().alias("gfn_last"))
        for k, t, r, into_range, count, g0, g1 in groups.iter_rows():
            key = (k, "traced" if t else "inferred", reasons[r], into_range)
            had = found.get(key)
            found[key] = [count, g0, g1] if had is None else [had[0] + count, min(had[1], g0), max(had[2], g1)]


def _batches(counts: np.ndarray, limit: int) -> Iterator[np.ndarray]:
    """Consecutive indices of ``counts`` in runs whose sum stays within ``limit`` (a count
    above it is a run of its own)."""
    start, total = 0, 0
    for i, n in enumerate(counts.tolist()):
        if total and total + n > limit:
            yield np.arange(start, i)
            start, total = i, 0
        total += n
    if start < len(counts):
        yield np.arange(start, len(counts))


def _codes(t: pa.Table, name: str) -> tuple[np.ndarray, list[str]]:
    """A dictionary column's codes and its dictionary."""
    col = t.select([name]).unify_dictionaries().column(name).combine_chunks() if t.num_rows else \
        pa.array([], t.schema.field(name).type)
    if not isinstance(col, pa.DictionaryArray):  # SPTE_CHANGES_SCHEMA has them encoded; a table from elsewhere may not
        col = col.dictionary_encode()
    return col.indices.to_numpy(zero_copy_only=False), col.dictionary.to_pylist()


def _indices(words: list[str], wanted: tuple[str, ...]) -> np.ndarray:
    """Codes of ``wanted`` in a dictionary (those it has)."""
    return np.asarray([i for i, w in enumerate(words) if w in wanted], np.int64)


def _positioned(c: dict[str, Any]) -> bool:
    """A delete, move or re-create the trace positions, with the range it removed."""
    return c["kind"] in ("delete", "move", "recreate") and c["seq"] is not None and bool(c["old_npages"]) \
        and c["window_start"] is not None


#: Page rows from which the rows gathered so far are made a piece of the pages table (and, once
#: the table is long, written to disk): a 52 M-event churn recording's ledger lists 570 000 pages
#: (76 MiB as a table, ~140 bytes a row with its texts), held from the ledger to the report's
#: end, and made at once with every row's ids, texts and reasons alongside it (the ledger's peak).
ROWS_PER_PIECE = 1 << 16


class _PageRows:
    """The pages table's rows, gathered a change at a time as page ids and made columns a piece
    (:data:`ROWS_PER_PIECE` rows) at a time, kept on disk from a size on (:class:`Parts`).

    Why ids first: a zap-all trace lists every page of the VM at every change (243 000 rows for
    5 000 changes of a 20 M-event churn recording); a dict per row cost ~3 s."""

    def __init__(self, pg: _Pages) -> None:
        self.pg = pg
        # on disk from as many bytes as an array kept on disk (a row is ~140 bytes with its texts)
        self.parts = Parts("the zap ledger's pages", on_disk=max(1, spilled.ARRAYS_ON_DISK // 16),
                           per_write=ROWS_PER_PIECE)
        self._clear()

    def _clear(self) -> None:
        self.change: list[np.ndarray] = []
        self.seq: list[np.ndarray] = []
        self.page: list[np.ndarray] = []
        self.zapped: list[np.ndarray] = []
        self.reason: list[str] = []

    def add(self, change: int, seq: int, fate: dict[int, str], zapped: set[int]) -> None:
        """One change's pages: the zapped first, then by gfn and id."""
        pg = self.pg
        ids = np.fromiter(fate, np.int64, len(fate))
        hit = np.isin(ids, np.fromiter(zapped, np.int64, len(zapped)))
        order = np.lexsort((ids, pg.gfn[ids], ~hit))
        ids, hit = ids[order], hit[order]
        self.change.append(np.full(len(ids), change, np.int32))
        self.seq.append(np.full(len(ids), seq, np.int64))
        self.page.append(ids)
        self.zapped.append(hit)
        self.reason.extend(fate[p] for p in ids.tolist())
        if len(self.reason) >= ROWS_PER_PIECE:
            self._flush()

    def _flush(self) -> None:
        """The rows gathered so far as a piece of the table."""
        if not self.page:
            return
        pg = self.pg
        ids = np.concatenate(self.page)
        hit = np.concatenate(self.zapped)
        gfn, level, direct, zap = pg.gfn[ids], pg.level[ids], pg.direct[ids], pg.zap[ids]
        assert pg.text is not None  # the page book's text codes
        role_text = pa.DictionaryArray.from_arrays(pa.array(pg.text[ids]), pa.array(pg.texts, pa.string()))
        self.parts.append(pa.table({
            "change": np.concatenate(self.change), "seq": np.concatenate(self.seq), "page": ids, "gfn": gfn,
            "level": level.astype(np.int8), "role": pg.role[ids].astype(np.uint32),
            "role_text": role_text.cast(pa.string()), "direct": direct,
            "covers_first": pa.array(gfn, mask=~direct),
            "covers_last": pa.array(gfn + _covers(gfn, level) - np.uint64(1), mask=~direct),
            "fate": pa.array(np.where(hit, "zapped", "kept"), pa.string()),
            "reason": pa.array(self.reason, pa.string()),
            "zap_seq": pa.array(zap, mask=zap < 0),
        }, schema=PAGES_SCHEMA))
        self._clear()

    def table(self) -> pa.Table:
        """Every row, in the order added; may be called once."""
        self._flush()
        pieces = self.parts.tables()
        return pa.concat_tables(pieces) if pieces else PAGES_SCHEMA.empty_table()


def _append(columns: dict[str, list[Any]], values: dict[str, Any]) -> None:
    for k, v in values.items():
        columns[k].append(v)


def zap_ledger(data: TraceData, replay: ReplayResult) -> ZapLedger:
    """The ledger of every positioned delete, move and re-create of the replay's timeline."""
    profile = profile_of(replay)
    tdp = replay.mmu == "tdp"
    za_seq, za_pid = seq_pid(data, zap_all_event(data))
    pg = _Pages.of(replay.shadow_pages)
    timeline = replay.memslots.to_pylist()
    questions = [(c["seq"], c["old_base_gfn"], c["old_base_gfn"] + c["old_npages"]) for c in timeline if _positioned(c)]
    # each pass over the SPTE-change table (on disk when long) maps all of its columns
    owners_at = {} if tdp else _leaf_owners(replay.spte_changes, questions, replay.release_pages)
    release_freed_memory()  # the owners' sorts (~170 MiB freed at 14 M changes) are not the next step's
    candidates = _candidates(pg, [(c["window_start"], c["seq"]) for c in timeline if _positioned(c)])
    lifetimes = replay.summaries.get("memslot")
    created = {} if lifetimes is None else {
        (s, u): f for s, f, u in zip(*(lifetimes.column(c).to_pylist() for c in ("slot", "from_seq", "until_seq")))}
    rows: dict[str, list[Any]] = {f.name: [] for f in REMOVALS_SCHEMA}
    page_rows = _PageRows(pg)
    srow: dict[str, list[Any]] = {f.name: [] for f in SPTES_SCHEMA}

    positioned = [(i, c) for i, c in enumerate(timeline) if _positioned(c)]
    starts = np.array([c["window_start"] for _i, c in positioned], np.int64)
    lines = np.array([c["seq"] for _i, c in positioned], np.int64)
    start_found, start_at = data.events_at(starts, ("ts",))
    line_found, line_at = data.events_at(lines, ("ts",))
    window_events = data.events_in(starts, lines)
    zap_alls: list[int | None] = []
    for _i, c in positioned:
        hits = za_seq[(za_seq >= c["window_start"]) & (za_seq <= c["seq"]) & (za_pid == c["pid"])]
        zap_alls.append(int(hits[0]) if len(hits) else None)
    removed = _removed_leaves(replay.spte_changes, [(c["window_start"], c["seq"], c["old_base_gfn"],
                                         c["old_base_gfn"] + c["old_npages"], za is not None)
                                        for (_i, c), za in zip(positioned, zap_alls)], tdp, replay.release_pages)
    replay.release_pages()
    # each change reads a little of the page book's columns (on disk when long), all of them by
    # the end: given back every 64 changes (the ledger's peak at 109 M events)
    for k, ((i, c), za, leaves) in enumerate(spilled.releasing(zip(positioned, zap_alls, removed), every=64)):
        ws, line, lo = c["window_start"], c["seq"], c["old_base_gfn"]
        owners = owners_at.get((line, lo, lo + c["old_npages"]), np.empty(0, np.int64))
        fate, zapped = _fates(pg, c, za, tdp, profile, owners, candidates[(ws, line)])
        page_rows.add(i, line, fate, zapped)
        for how, why, inr, cnt, g0, g1 in leaves:
            _append(srow, {"change": i, "seq": line, "how": how,
                           "evidence": why if how == "traced" or why != "owning page zapped"
                           else "owning page zapped (its kvm_mmu_prepare_zap_page is traced)",
                           "in_range": inr, "sptes": cnt, "gfn_first": g0, "gfn_last": g1})
        t0 = int(start_at["ts"][k]) if start_found[k] else None
        t1 = int(line_at["ts"][k]) if line_found[k] else None
        n_zapped = len(zapped)
        _append(rows, {"change": i, "seq": line, "ts": t1, "window_start": ws, "anchor": c["anchor"],
                       "pid": c["pid"], "slot": c["slot"], "slot_created_seq": created.get((c["slot"], ws)),
                       "kind": c["kind"], "base_gfn": lo, "npages": c["old_npages"],
                       "new_base_gfn": c["base_gfn"] if c["kind"] != "delete" else None,
                       "policy": "zap_all" if za is not None else "zap_slot", "zap_all_seq": za,
                       "rule": _rule(za, tdp, profile), "pages_zapped": n_zapped, "pages_kept": len(fate) - n_zapped,
                       "kept_missed": sum(1 for why in fate.values() if why == KEPT_MISSED),
                       "leaf_sptes_removed": sum(group[3] for group in leaves),
                       "leaf_sptes_traced": sum(group[3] for group in leaves if group[0] == "traced"),
                       "window_events": int(window_events[k]),
                       "window_ns": t1 - t0 if t0 is not None and t1 is not None else None,
                       "source": c.get("source"), "placement": c.get("placement"), "confidence": c.get("confidence")})
    ledger = ZapLedger(pa.table(rows, schema=REMOVALS_SCHEMA), page_rows.table(), pa.table(srow, schema=SPTES_SCHEMA))
    release_freed_memory()  # the passes' and the loop's (~90 MiB kept by the allocators at 20 M events)
    return ledger
