"""The zap ledger: for each memslot delete or move, what the kernel zapped, what it kept and why.

This is what a maintainer reconstructs by hand from a trace when a memslot change misbehaves
(seed 000 took weeks of it). It is computed from a finished replay (its memslot timeline,
shadow-page book, SPTE journal and memslot summary) plus the trace's seq->ts column and its
zap-all events; it decides nothing new, it lines the replay's facts up per change.

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
* the **cost**: events and nanoseconds from the window's start to the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from kvmtrace.parsers.schema import TraceData
from kvmtrace.replays.detectors.slot_removal import RULE_WORDS, zap_rule_mask
from kvmtrace.replays.inputs import seq_pid, zap_all_event
from kvmtrace.replays.profiles import KernelProfile, ept, profile_for
from kvmtrace.replays.results import ReplayResult

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


@dataclass(frozen=True)
class _RuleContext:
    """What :func:`zap_rule_mask` reads from a detector context: only the kernel profile."""

    profile: KernelProfile


def profile_of(replay: ReplayResult) -> KernelProfile:
    """The profile the replay used: every profile name starts with the first kernel of its era
    (``"6.12+ (role F, ...)"``), which :func:`profile_for` maps back to the same era; the EPT
    flavour of it ends in ``" EPT"`` (:func:`kvmtrace.replays.profiles.ept`)."""
    m = re.match(r"\d+\.\d+", replay.profile)
    base = profile_for(m.group() if m else None)
    return ept(base) if replay.profile.endswith(" EPT") else base


def role_text(row: dict) -> str:
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
    return np.left_shift(np.uint64(1), np.uint64(9) * level.astype(np.uint64))


def _spte_owners_at(changes: pl.DataFrame, tdp: bool, seq: int, lo: int, hi: int) -> set[int]:
    """Pages owning a present leaf SPTE into [lo, hi) just before ``seq`` (the change's line: the
    per-slot rmap zap the model infers sits at the line itself)."""
    before = changes.filter(pl.col("seq") < seq)
    key = ["as_id", "gfn", "level"] if tdp else ["key"]
    last = before.group_by(key).last()
    alive = last.filter((pl.col("state") == "present") & (pl.col("gfn") >= lo) & (pl.col("gfn") < hi)
                        & pl.col("page").is_not_null())
    return set(alive["page"].to_list())


def zap_ledger(data: TraceData, replay: ReplayResult) -> ZapLedger:
    """The ledger of every positioned delete, move and re-create of the replay's timeline."""
    profile = profile_of(replay)
    ev_seq = data.events.column("seq").to_numpy()
    ev_ts = data.events.column("ts").to_numpy()
    za_seq, za_pid = seq_pid(data, zap_all_event(data))
    pages = replay.shadow_pages.to_pylist()
    pg = {k: replay.shadow_pages.column(k).to_numpy(zero_copy_only=False)
          for k in ("gfn", "role", "level", "direct", "first_seq")}
    zap = np.asarray(replay.shadow_pages.column("zap_seq").fill_null(-1).to_numpy(), dtype=np.int64)
    obsolete = np.asarray(replay.shadow_pages.column("obsolete_seq").fill_null(-1).to_numpy(), dtype=np.int64)
    passthrough = replay.shadow_pages.column("passthrough").fill_null(0).to_numpy().astype(bool) \
        if "passthrough" in replay.shadow_pages.column_names else np.zeros(len(pages), bool)
    changes = pl.from_arrow(replay.spte_changes).with_columns(pl.col("state").cast(pl.String),
                                                              pl.col("reason").cast(pl.String))
    tdp = replay.mmu == "tdp"
    lifetimes = replay.summaries.get("memslot")
    created = {} if lifetimes is None else {
        (s, u): f for s, f, u in zip(*(lifetimes.column(c).to_pylist() for c in ("slot", "from_seq", "until_seq")))}
    rows: dict[str, list] = {f.name: [] for f in REMOVALS_SCHEMA}
    prow: dict[str, list] = {f.name: [] for f in PAGES_SCHEMA}
    srow: dict[str, list] = {f.name: [] for f in SPTES_SCHEMA}

    def ts_of(seq: int) -> int | None:
        i = int(np.searchsorted(ev_seq, seq))
        return int(ev_ts[i]) if i < len(ev_seq) and ev_seq[i] == seq else None

    for i, c in enumerate(replay.memslots.to_pylist()):
        if c["kind"] not in ("delete", "move", "recreate") or c["seq"] is None or not c["old_npages"] \
                or c["window_start"] is None:
            continue
        ws, line, lo, n = c["window_start"], c["seq"], c["old_base_gfn"], c["old_npages"]
        hi = lo + n
        hits = za_seq[(za_seq >= ws) & (za_seq <= line) & (za_pid == c["pid"])]
        za = int(hits[0]) if len(hits) else None
        policy = "zap_all" if za is not None else "zap_slot"
        rule = ("zap-all (KVM_X86_QUIRK_SLOT_ZAP_ALL): kvm_mmu_zap_all_fast makes every page obsolete, "
                "kvm_zap_obsolete_pages zaps them") if za is not None else (
            "TDP MMU: leaf SPTEs of the slot zapped (kvm_tdp_mmu_unmap_gfn_range); page tables kept"
            if tdp else RULE_WORDS[profile.slot_zap_rule])
        zapped = (zap >= ws) & (zap <= line)
        # alive when the change took effect: built before its line (a window that starts at the
        # thread's previous line spans vCPU work too) and not zapped before the window
        alive = (pg["first_seq"] < line) & ((zap < 0) | (zap >= ws))
        in_range = (pg["gfn"] >= lo) & (pg["gfn"] < hi)
        direct = pg["direct"].astype(bool) if len(pages) else np.zeros(0, bool)
        span = _covers(pg["gfn"], pg["level"])
        covers = direct & (pg["gfn"] < np.uint64(hi)) & (pg["gfn"] + span > np.uint64(lo))
        must = zap_rule_mask(_RuleContext(profile), pg["gfn"].astype(np.uint64), pg["role"].astype(np.uint64),
                             lo, n) if len(pages) and not tdp else np.zeros(len(pages), bool)
        owners = _spte_owners_at(changes, tdp, line, lo, hi) if not tdp else set()
        fate: dict[int, str] = {}
        for p in np.flatnonzero(zapped):
            if za is not None:
                why = "zapped after the fast zap made it obsolete"
            elif must[p]:
                why = "zapped by the rule: " + ("gfn in the slot, holds guest PTEs" if profile.slot_zap_rule == "gptes"
                                                else "gfn in the slot's range at its level")
            else:
                why = "zapped inside the window, not by the slot rule"
            if pages[p]["root_count"] > 0:
                why += "; a root still referenced by a vCPU: marked invalid, freed when the vCPU drops it"
            fate[int(p)] = why
        kept = alive & ~zapped
        for p in np.flatnonzero(kept):
            if za is not None:
                if obsolete[p] == za:
                    fate[int(p)] = f"obsolete generation: made obsolete at seq {za}, " + (
                        f"zapped at seq {zap[p]}" if zap[p] >= 0 else KEPT_TDP_ROOT if tdp
                        else "still alive at the end of the trace")
                continue
            if tdp:
                if covers[p]:
                    fate[int(p)] = KEPT_TDP
            elif 0 <= obsolete[p] < ws and (in_range[p] or covers[p]):
                fate[int(p)] = KEPT_OBSOLETE
            elif must[p]:
                fate[int(p)] = KEPT_MISSED
            elif covers[p] or (in_range[p] and direct[p]):
                fate[int(p)] = KEPT_BY_RULE
            elif in_range[p] and passthrough[p]:
                fate[int(p)] = KEPT_PASSTHROUGH
            elif int(p) in owners:
                fate[int(p)] = KEPT_OUTSIDE
        for p in sorted(fate, key=lambda p: (fate[p].startswith("zapped") is False, pg["gfn"][p], p)):
            row = pages[p]
            d = bool(direct[p])
            for k, v in (("change", i), ("seq", line), ("page", p), ("gfn", row["gfn"]), ("level", row["level"]),
                         ("role", row["role"]), ("role_text", role_text(row)), ("direct", d),
                         ("covers_first", row["gfn"] if d else None),
                         ("covers_last", int(row["gfn"] + span[p] - 1) if d else None),
                         ("fate", "zapped" if zapped[p] else "kept"), ("reason", fate[p]),
                         ("zap_seq", int(zap[p]) if zap[p] >= 0 else None)):
                prow[k].append(v)
        # the change's own removals: under zap-all everything in the window; under zap-slot the
        # leaves into the range and those of the pages it zapped (a vCPU replacing an MMIO SPTE
        # elsewhere in the window is not the change's doing)
        removed = changes.filter(pl.col("seq").is_between(ws, line)
                                 & pl.col("state").is_in(["zapped", "zapped_inferred"])
                                 & ~pl.col("reason").str.starts_with("page table removed")
                                 & (pl.lit(za is not None) | (pl.col("reason") == "owning page zapped")
                                    | ((pl.col("gfn") >= lo) & (pl.col("gfn") < hi))))
        removed = removed.with_columns(
            pl.when(pl.col("state") == "zapped_inferred").then(pl.lit("inferred"))
            .when(pl.lit(tdp)).then(pl.lit("traced")).otherwise(pl.lit("inferred")).alias("how"),
            ((pl.col("gfn") >= lo) & (pl.col("gfn") < hi)).alias("in_range"))
        per = removed.group_by("how", "reason", "in_range").agg(
            pl.len().alias("sptes"), pl.col("gfn").min().alias("gfn_first"), pl.col("gfn").max().alias("gfn_last")
        ).sort("how", "reason", "in_range", descending=[True, False, True])
        for how, why, inr, cnt, g0, g1 in per.iter_rows():
            for k, v in (("change", i), ("seq", line), ("how", how),
                         ("evidence", why if how == "traced" or why != "owning page zapped"
                          else "owning page zapped (its kvm_mmu_prepare_zap_page is traced)"),
                         ("in_range", inr), ("sptes", cnt), ("gfn_first", g0), ("gfn_last", g1)):
                srow[k].append(v)
        t0, t1 = ts_of(ws), ts_of(line)
        a, b = np.searchsorted(ev_seq, [ws, line], side="left"), np.searchsorted(ev_seq, line, side="right")
        reasons = list(fate.values())
        for k, v in (("change", i), ("seq", line), ("ts", t1), ("window_start", ws), ("anchor", c["anchor"]),
                     ("pid", c["pid"]), ("slot", c["slot"]), ("slot_created_seq", created.get((c["slot"], ws))),
                     ("kind", c["kind"]), ("base_gfn", lo), ("npages", n),
                     ("new_base_gfn", c["base_gfn"] if c["kind"] != "delete" else None),
                     ("policy", policy), ("zap_all_seq", za), ("rule", rule),
                     ("pages_zapped", int(zapped.sum())), ("pages_kept", len(reasons) - int(zapped.sum())),
                     ("kept_missed", reasons.count(KEPT_MISSED)),
                     ("leaf_sptes_removed", removed.height),
                     ("leaf_sptes_traced", int((removed["how"] == "traced").sum())),
                     ("window_events", int(b - a[0])),
                     ("window_ns", t1 - t0 if t0 is not None and t1 is not None else None)):
            rows[k].append(v)
    return ZapLedger(pa.table(rows, schema=REMOVALS_SCHEMA), pa.table(prow, schema=PAGES_SCHEMA),
                     pa.table(srow, schema=SPTES_SCHEMA))
