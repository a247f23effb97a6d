"""``replay(data)``: walk one trace through the MMU model and collect tables, checks and findings.

Order of work: pick the kernel profile; build the memslot timeline (from the trace's own QEMU
lines unless the caller passes a QEMU log or a layout); decide which MMU produced the trace and
which zap policy it used (classify.py); walk the state-changing events in global seq order
through the shadow or TDP model (walk.py); then run the detectors, the what-if and the
summaries on what the model recorded. Events that change no MMU state (guest page-table walks,
``kvm_mmu_spte_requested``, MMIO checks) never enter the loop.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pyarrow as pa

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.spilled import give_back
from kvmtrace.replays import eras
from kvmtrace.replays import memslots as ms
from kvmtrace.replays.classify import detect_mmu, guess_profile, infer_zap_policy, spte_format
from kvmtrace.replays.consequences import consequences
from kvmtrace.replays.detectors import run_all
from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.digest import Digest, digest_of
from kvmtrace.replays.evidence import absent_evidence, gate
from kvmtrace.replays.findings import LostWindows, finalize
from kvmtrace.replays.inputs import (
    SeqIndex,
    columns,
    fault_columns,
    kvmmmu_events,
    kvmmmu_names,
    model_input,
    page_limits,
    require_events,
    role_words,
    seq_pid,
    unusable_events,
    zap_all_event,
)
from kvmtrace.replays.journal import Journal
from kvmtrace.replays.leaf_proof import leaf_evidence
from kvmtrace.replays.needs import WALK_EVENTS
from kvmtrace.replays.pages import PageBook
from kvmtrace.replays.placement import facts_from
from kvmtrace.replays.profiles import KernelProfile, decode_role, profile_for
from kvmtrace.replays.releases import release_of
from kvmtrace.replays.results import ReplayResult
from kvmtrace.replays.summaries import memslot_summary, zap_all_summary
from kvmtrace.replays.threads import vcpu_threads
from kvmtrace.replays.walk import walk
from kvmtrace.replays.whatif import whatif


def replay(data: TraceData, *, kernel: str | None = None, memslots: dict[str, Any] | None = None,
           qemu_log_lines: list[str] | None = None, zap_rule: str | None = None,
           digest: Digest | None = None) -> ReplayResult:
    """Replay ``data`` against the simulated MMU.

    ``kernel`` overrides the trace's kernel release; ``memslots`` is a parsed ``--memslots`` JSON
    layout; ``qemu_log_lines`` the lines of a QEMU ``-trace`` log (the caller reads the file);
    ``zap_rule`` names a memslot-removal rule (``eras.RULES``) to check instead of the kernel's own,
    e.g. the never-merged 2019 proposal ``level_mask_2019``. ``digest``: what the replay needs of
    the events ``data`` may leave out (:mod:`kvmtrace.replays.digest`), where the trace was read in
    windows keeping only :mod:`kvmtrace.replays.needs`' events; computed from ``data`` otherwise.
    """
    result = _replay(data, kernel, memslots, qemu_log_lines, zap_rule, digest)
    # the steps' working state went with their frame: give it back before the caller builds a
    # report on top of what is left (a 20 M-event churn recording: 460 -> 310 MiB resident)
    _let_go(data)
    return result


def _replay(data: TraceData, kernel: str | None, memslots: dict[str, Any] | None, qemu_log_lines: list[str] | None,
            zap_rule: str | None, digest: Digest | None) -> ReplayResult:
    """:func:`replay`'s steps, each followed by :func:`_let_go`."""
    digest = digest if digest is not None else digest_of(data)
    require_events(data, digest.walker_events)
    assumptions: list[str] = []
    limits: list[str] = []
    if kernel is None and data.info.kernel is None:
        profile, why = guess_profile(data)
        assumptions.append(f"the trace names no kernel (pass --kernel to say it); {why}: {profile.name}")
    else:
        profile = profile_for(kernel or data.info.kernel)
    mmu, mmu_evidence = detect_mmu(data, profile, digest)
    assumptions.append(f"MMU {mmu}, decided from the trace: " + "; ".join(mmu_evidence))
    profile = spte_format(data, profile, mmu)
    _let_go(data)
    assumptions.append(f"SPTE format {profile.flavour} (told by the memory-type bits of leaf SPTEs)")
    timeline, kvmmmu_count = _timeline(data, profile, memslots, qemu_log_lines, digest)
    _let_go(data)
    zap_all_seqs, zap_all_pids = seq_pid(data, zap_all_event(data))
    zap_policy, why = infer_zap_policy(timeline, zap_all_seqs, zap_all_pids, profile)
    assumptions.append(f"zap policy {zap_policy}: {why}")
    profile = _with_rule(profile, zap_rule)
    if profile.slot_zap_rule is not None:
        chosen = " (chosen by the caller instead of this kernel's)" if profile.zap_rule_chosen else ""
        assumptions.append(f"per-slot zap rule{chosen}: {eras.rule(profile.slot_zap_rule).label()}")

    words = role_words(data)
    roles = words.complete(profile)
    limits.extend(page_limits(data, words, profile))
    journal = Journal()
    pages = PageBook(words.mask)
    # the walk freezes the book: every reader from here shares one copy, the shadow_pages table too
    walk(model_input(data, words, profile), profile, mmu, zap_policy, timeline, journal, pages, roles)
    _let_go(data)  # the walk's working arrays, before the detectors' inputs are read

    ctx = Context(profile, mmu, zap_policy, roles, timeline, journal, pages, journal.installs(), fault_columns(data),
                  columns(data, "check_mmio_spte", ("kvm_gen", "spte_gen")),
                  columns(data, "mark_mmio_spte", ("gfn", "gen")), columns(data, "handle_mmio_page_fault", ("gfn",)),
                  zap_all_seqs, zap_all_pids, release_of(kernel or data.info.kernel), leaf_evidence(data, digest))
    _let_go(data)
    lost = LostWindows(digest, data.info.cut_short, data.info.cpus)
    if len(lost.lo) > (lost.tail is not None):
        limits.append(f"{len(lost.lo) - (lost.tail is not None)} lost-event window(s): findings that depend on them "
                      "are warnings, not errors")
    if lost.tail is not None:
        limits.append(f"the file was cut short: {lost.tail_words()} some CPU's events are missing, so findings "
                      "that depend on them are warnings, not errors")
    outcomes = gate(run_all(ctx), absent_evidence(data, mmu, timeline.known, unusable_events(data)))
    locate = SeqIndex(data)
    locate.ask(f.seq for o in outcomes for f in o.findings if f.seq is not None)
    findings, checks = finalize(outcomes, lost, locate)
    _let_go(data)

    unexplained = journal.unexplained_table()
    spte_changes = journal.spte_changes()
    _let_go(data)
    # each summary reads the arrays kept on disk afresh: their pages go back between them
    memslot = memslot_summary(ctx)
    _let_go(data)
    zap_all = zap_all_summary(ctx, locate)
    _let_go(data)
    summaries = {"memslot": memslot, "zap_all": zap_all, "consequences": consequences(ctx)}
    _let_go(data)  # the consequences' working arrays, before the what-if's
    limits.extend(_limits(mmu, timeline))
    assumptions.extend(_assumptions(mmu))
    return ReplayResult(
        mmu=mmu, zap_policy=zap_policy, profile=profile.name,
        events=kvmmmu_count, explained_events=kvmmmu_count - unexplained.num_rows,
        shadow_pages=pages.table(profile), spte_changes=spte_changes, memslots=timeline.table(),
        findings=findings, checks=checks, unexplained=unexplained,
        summaries=summaries,
        whatif=_released(whatif(ctx, spte_changes, journal.release_pages), journal), assumptions=assumptions,
        limits=limits + timeline.notes, mmu_evidence=mmu_evidence, vcpus=vcpu_threads(data, digest.entry_pairs),
        # the table's file only: a method of the journal would keep all of it alive with the result
        spilled_pages=journal.changes_on_disk.release if journal.changes_on_disk is not None else None,
    )


def _released(table: pa.Table | None, journal: Journal) -> pa.Table | None:
    """``table``, once the pages of the SPTE-change table its step read are given back."""
    journal.release_pages()
    return table


def _let_go(data: TraceData) -> None:
    """Between two steps of the replay, give back what the last one read or freed: the pages of
    the tables kept on disk it passed over (:meth:`TraceData.release_pages`) and the allocators'
    free memory and the pages of what the replay keeps on disk (:func:`give_back`), so that
    steps do not add up in the resident set."""
    data.release_pages()
    give_back()


def _with_rule(profile: KernelProfile, name: str | None) -> KernelProfile:
    """The profile checked against rule ``name`` (validated), marked when it is not the era's."""
    if name is None or name == profile.slot_zap_rule:
        return profile
    return replace(profile, slot_zap_rule=eras.rule(name).name, zap_rule_chosen=True)


def decoded_table(data: TraceData, event: str, kernel: str | None = None) -> pa.Table:
    """A page-event table with its role word decoded into columns (for reports and notebooks)."""
    return decode_role(data.table(event), profile_for(kernel or data.info.kernel))


def _timeline(data: TraceData, profile: KernelProfile, layout: dict[str, Any] | None,
              lines: list[str] | None, digest: Digest) -> tuple[ms.MemslotTimeline, int]:
    """The memslot timeline, and how many kvmmmu events the trace has. The layout file (if any)
    is the starting layout; the trace's own lines, or a QEMU log's (placed on the trace by the
    kernel's response to each), apply after it.

    The kvmmmu events' seqs, pids and zap flags only anchor the memslot lines, so they are let go
    here rather than held through the model run. Of the guest walker's (never zaps; most of a
    trace) only each line's thread's last one counts: the digest has it for the trace's own
    lines, a pass over the events finds it for a QEMU log's (placed only now). The trace's own
    lines need only their own threads' events (a line's window is its thread's); a QEMU log's
    lines are placed anywhere, so that path takes every thread's."""
    start = ms.parse_layout(layout) if layout is not None else []
    walker = frozenset(WALK_EVENTS)
    walked = sum(data.tables[name].num_rows for name in kvmmmu_names(data, walker)) + digest.walker_events
    if lines is not None:
        kv_seq, kv_pid, kv_zap = kvmmmu_events(data, profile, walker)
        return ms.from_log(lines, facts_from(data, profile), kv_seq, kv_pid, kv_zap, start, walker), walked
    prints = data.tables.get("print")
    kv_seq, kv_pid, kv_zap = kvmmmu_events(data, profile, walker, ms.line_threads(prints))
    tl = ms.from_prints(prints, kv_seq, kv_pid, kv_zap, start, digest.walked_before)
    if layout is not None and len(tl.changes) == len(start):
        tl.notes.append("no memslot lines in the trace: the layout file's slots are taken to stay for the whole trace")
    return tl, walked


def _limits(mmu: str, tl: ms.MemslotTimeline) -> list[str]:
    out = []
    if mmu in ("shadow", "legacy_tdp"):
        out.append("shadow MMU: leaf SPTE zaps, write protection, dirty-log clears and rmap unmaps are not traced; "
                   "SPTE ownership is inferred from the SPTE page and the faulting vCPU's last page at that level")
    if mmu == "tdp":
        out.append("TDP MMU: entries carry no root; after a zap-all, old-root teardown is told apart from the new "
                   "root's build by the old_spte value only")
    if not tl.known:
        out.append("memslot layout unknown: layout checks are not evaluated")
    elif not tl.complete:
        out.append("memslot layout partial (the trace started after the VM was built): only gfns of removed slots "
                   "count as unmapped")
    return out


def _assumptions(mmu: str) -> list[str]:
    return [
        "guest page-table walker events, kvm_mmu_spte_requested and MMIO checks change no SPTE state: they count "
        "as explained without a model step",
        "a page seen first through an 'existing' lookup, sync or zap predates the trace",
    ] + (["a kvm_mmu_set_spte into an SPTE page of a zapped page means the page's memory was reused"]
         if mmu != "tdp" else
         ["a TDP change whose old_spte is non-present while the model holds a present copy of that key comes "
          "from another root (roots are not traced) when more than one valid root exists; with a single valid "
          "root it contradicts the model and the stale copy is dropped",
          "Accessed/Dirty bits that appear in an old_spte were set by the CPU's page walker (KVM's own A/D "
          "clears, for dirty logging and aging, are traced on every release)"])
