"""Which kernel era, which MMU and which zap policy produced a trace, decided from the trace.

Each answer comes with the evidence in words, because the report shows it: a profile guessed from
the TDP non-present value, an MMU told by the ``direct`` role bit, a zap policy proven by the
``kvm_mmu_zap_all_fast`` events inside the memslot changes' windows.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.parsers.schema import TraceData
from kvmtrace.parsers.text.assemble import META_TEXT_FORMS
from kvmtrace.replays import memslots as ms
from kvmtrace.replays.digest import Digest, digest_of
from kvmtrace.replays.inputs import PAGE_EVENTS, RoleWords, model_input, role_words
from kvmtrace.replays.needs import FAULT_EVENT
from kvmtrace.replays.profiles import KernelProfile, ept, flavour, flavour_counts, profile_for, spte_flavour
from kvmtrace.replays.stream import numpy_column

#: Page-event print forms of older kernels (the text reader's era labels) -> the release whose
#: role layout the reader placed the printed bits in (parsers/text/pages.py, ROLE_FORMS). Where
#: the form spans releases with different memslot-removal rules, the latest is taken: it zaps all
#: on a delete, so no per-slot rule is checked on a guess.
_FORM_RELEASE = {"5.1-5.3": "5.3", "3.11-5.0": "5.0", "2.6.35-3.10": "3.10"}


def guess_profile(data: TraceData) -> tuple[KernelProfile, str]:
    """A profile for a trace without a kernel release (text input): an older kernel's page-event
    print form names its era (and where the reader put the role bits); the TDP MMU's non-present
    value (``old_spte`` of installs) tells 6.10+ (BIT(63)) from older (0); otherwise the newest."""
    forms = {f.strip() for e in PAGE_EVENTS if e in data.tables
             for f in (data.tables[e].schema.metadata or {}).get(META_TEXT_FORMS, b"").decode().split(",")}
    old = sorted(f for f in forms if f in _FORM_RELEASE)
    if len(old) == 1 and not forms & {"5.4+"}:
        kernel = _FORM_RELEASE[old[0]]
        return profile_for(kernel), (f"the page events print the {old[0]} form, so a {kernel} kernel (its role "
                                     "layout) was assumed; pass --kernel to name the release and its removal rule")
    t = data.tables.get("kvm_tdp_mmu_spte_changed")
    if t is not None and t.num_rows:
        old_spte = numpy_column(t, "old_spte")
        zeros, bit63 = int((old_spte == 0).sum()), int((old_spte == np.uint64(1 << 63)).sum())
        if zeros > bit63:
            return profile_for("6.9"), "TDP non-present SPTEs are 0, so a kernel before 6.10 was assumed"
        return profile_for("6.12"), "TDP non-present SPTEs are BIT(63), so a 6.10+ kernel was assumed"
    return profile_for(None), "assumed the newest layout"


#: ``role.access`` of every TDP page: ACC_ALL (exec|write|user), kvm_calc_tdp_mmu_root_page_role
#: and the direct-map children alike.
ACC_ALL = 7
#: The four level-2 pages of the PAE root a shadow-paged guest without paging maps through
#: (mmu_alloc_direct_roots, root level PT32E: ``mmu_alloc_root(vcpu, i << (30 - PAGE_SHIFT), 0,
#: PT32_ROOT_LEVEL)`` for i in 0..3).
PAE_QUADRANT_GFNS = frozenset(i << 18 for i in range(4))
#: Fewest faults for "every fault followed a walk" to count.
MIN_FAULTS = 16


def detect_mmu(data: TraceData, profile: KernelProfile, digest: Digest | None = None) -> tuple[str, list[str]]:
    """Which MMU produced the trace, and the sentences the decision rests on (for the report).

    In order: TDP MMU SPTE changes prove the TDP MMU. Otherwise role bits decide, because the
    kernel builds them differently (mmu.c): TDP pages are always direct, access ACC_ALL, and
    rooted at the host's TDP level (4 or 5); shadow paging shadows the guest's own tables
    (direct=0, guest_mode=0), maps a guest's huge pages with direct pages carrying the guest
    PTE's access, and, for a guest running without paging (real mode, SeaBIOS), uses direct
    pages under a PAE root (four level-2 pages at 1 GiB steps) with cr0_wp=0 where TDP roles
    always have cr0_wp=1 (5.19+; earlier kernels copied the guest's CR0.WP). "All pages direct"
    alone does not tell the two apart. Text prints only some role bits: the decision then uses
    the carried ones (it needs ``direct``, ``level`` and ``access``) and its evidence names the
    others. Without them, a guest page-table walk before every fault tells shadow paging, and
    EPT-format leaf SPTEs tell TDP on Intel. ``digest``: the trace's walker digest (computed from
    ``data`` when not given)."""

    def rows(event: str) -> int:
        t = data.tables.get(event)
        return 0 if t is None else t.num_rows

    if rows("kvm_tdp_mmu_spte_changed"):
        return "tdp", [f"{rows('kvm_tdp_mmu_spte_changed')} kvm_tdp_mmu_spte_changed event(s): only the TDP MMU "
                       "(tdp_mmu=Y) emits them"]
    page_events = [e for e in PAGE_EVENTS if rows(e)]
    words = role_words(data)
    by_roles = bool(page_events) and not {f.name for f in profile.uncarried(words.mask)} & set(_NEEDED)
    if by_roles:
        decided = _from_roles(model_input(data, words, profile), profile, page_events, words)
        if decided is not None:
            return decided[0], decided[1] + _unprinted(words, profile)
    evidence = []
    walked = _faults_after_walks(data, digest if digest is not None else digest_of(data))
    if walked is not None:
        return "shadow", [walked]
    if "kvm_mmu_set_spte" in data.tables and spte_flavour(numpy_column(data.tables["kvm_mmu_set_spte"], "spte"),
                                                          profile) == "EPT":
        return "legacy_tdp", ["leaf SPTEs are EPT entries (memory type in bits 3-5): Intel two-dimensional paging "
                              "with the legacy MMU"]
    if by_roles:
        return "legacy_tdp", ["every page is direct with access ACC_ALL at levels 1-2 only: the legacy TDP MMU "
                              "or a shadow-paged guest's huge pages; no role bit, walk or SPTE format tells them "
                              "apart here, legacy TDP assumed", *_unprinted(words, profile)]
    if rows("kvm_mmu_set_spte") or page_events:
        evidence.append("kvm_mmu_set_spte or page events without kvm_tdp_mmu_spte_changed: the legacy MMU; without "
                        "the direct, level and access role bits shadow paging cannot be told from legacy TDP, "
                        "shadow paging assumed")
        return "shadow", evidence
    return "unknown", ["no page, SPTE or TDP MMU events"]


#: Role fields the decision from roles cannot do without.
_NEEDED = ("direct", "level", "access")


def _unprinted(words: RoleWords, profile: KernelProfile) -> list[str]:
    """The evidence's note of the role bits the input did not carry (nothing for whole words)."""
    if words.complete(profile):
        return []
    return [f"decided from the role bits the text prints; not printed: {words.missing(profile)}"]


def _field(profile: KernelProfile, role: np.ndarray, name: str, mask: int = 0xFFFFFFFF) -> np.ndarray | None:
    """The field's values, or None when the era has no such field or the input does not carry it."""
    f = profile.role_field(name)
    if f is None or f.bits & ~mask:
        return None
    return (role >> np.uint64(f.shift)) & np.uint64((1 << f.width) - 1)


def _from_roles(data: TraceData, profile: KernelProfile, events: list[str],
                words: RoleWords) -> tuple[str, list[str]] | None:
    """The decision from page role words (their carried bits), or None when they leave it open."""
    role = np.concatenate([numpy_column(data.tables[e], "role") for e in events])
    gfn = np.concatenate([numpy_column(data.tables[e], "gfn") for e in events])

    def field(name: str) -> np.ndarray | None:
        return _field(profile, role, name, words.mask)

    def needed(name: str) -> np.ndarray:
        values = field(name)
        # detect_mmu decides from roles only when the words carry every field of _NEEDED
        assert values is not None, f"role field {name} is not carried"
        return values

    direct = needed("direct") == 1
    level = needed("level")
    guest_mode = field("guest_mode")
    nested = ~direct & (guest_mode == 1) if guest_mode is not None else np.zeros(len(role), bool)
    # guest_mode not printed: an indirect page shadows the guest's own tables (shadow paging) or a
    # nested guest's (on a TDP host); direct pages at the TDP root level tell which.
    unsure = ~direct if guest_mode is None and profile.role_field("guest_mode") is not None \
        else np.zeros(len(role), bool)
    own = ~direct & ~nested & ~unsure
    if own.any():
        out = [f"{int(own.sum())} page event(s) of pages that shadow the guest's own page tables (role.direct=0, "
               "guest_mode=0): shadow paging"]
        four = field("has_4_byte_gpte")
        if four is not None and (four[own] == 1).any():
            out.append("some have has_4_byte_gpte=1: the guest used 32-bit non-PAE paging")
        return "shadow", out
    d = direct
    high = d & (level >= 3)
    if unsure.any():
        if high.any():
            return "legacy_tdp", [
                f"direct pages up to level {int(level[high].max())}: the host's TDP root level; shadow paging uses "
                "direct pages only at levels 1-2",
                f"{int(unsure.sum())} page event(s) of indirect pages (role.direct=0): on a TDP host these shadow a "
                "nested guest's EPT/NPT tables (guest_mode is not printed)"]
        return "shadow", [f"{int(unsure.sum())} page event(s) of indirect pages (role.direct=0) and no direct page "
                          "at a TDP root level (3+): shadow paging; guest_mode is not printed, so a nested guest's "
                          "pages on a legacy TDP host whose roots the trace never shows would look the same"]
    nested_note = ([f"{int(nested.sum())} page event(s) of pages that shadow a nested guest's EPT/NPT tables "
                    "(role.direct=0, guest_mode=1): L1 runs an L2 guest on two-dimensional paging"]
                   if nested.any() else [])
    access = needed("access")
    partial = d & (access != ACC_ALL)
    if partial.any():
        return "shadow", [f"{int(partial.sum())} direct page event(s) with access "
                          f"{sorted(set(access[partial].tolist()))} below ACC_ALL ({ACC_ALL}): TDP pages always have "
                          "ACC_ALL, while shadow paging maps a guest huge page with direct pages that carry the guest "
                          "PTE's access"]
    if high.any():
        return "legacy_tdp", [f"direct pages up to level {int(level[high].max())}: the host's TDP root level; shadow "
                              "paging uses direct pages only at levels 1-2 (a guest's huge pages, or the PAE root "
                              "of a guest without paging)", *nested_note]
    wp = field("cr0_wp")
    pae = {int(g) for g in gfn[d & (level == 2)]} >= PAE_QUADRANT_GFNS
    wp0 = wp is not None and profile.version >= (5, 19) and bool((wp[d] == 0).any())
    if wp0 or pae:
        out = ["only direct pages at levels 1-2: a guest running without paging (real mode, e.g. SeaBIOS) on "
               "shadow paging"]
        if wp0:
            out.append("direct pages with cr0_wp=0: TDP roles always set cr0_wp=1 on 5.19+ kernels, while a "
                       "non-paging guest's shadow role leaves it 0")
        if pae:
            out.append("level-2 direct pages at gfns 0, 0x40000, 0x80000, 0xc0000: the four quarters of the PAE "
                       "root KVM uses for a guest without paging")
        return "shadow", out + nested_note
    return None


def _faults_after_walks(data: TraceData, digest: Digest) -> str | None:
    """The sentence for "every fault followed a guest page-table walk on its vCPU", or None.

    Shadow paging translates every faulting guest-virtual address through the guest's tables
    (FNAME(page_fault) -> FNAME(walk_addr)) before it requests an SPTE; a TDP fault arrives with
    the guest-physical address and walks nothing unless it emulates an instruction, so on a TDP
    trace some faults always come without a walk. The walks are counted by the digest."""
    faults = data.tables.get(FAULT_EVENT)
    if faults is None or faults.num_rows < MIN_FAULTS or not digest.walker_events:
        return None
    if digest.faults_after_walks != digest.faults:
        return None
    return (f"each of the {digest.faults} faults followed a guest page-table walk on its vCPU: shadow paging walks "
            "the guest's tables before every fault, a TDP fault carries the guest-physical address")


def spte_format(data: TraceData, profile: KernelProfile, mmu: str) -> KernelProfile:
    """The profile with the SPTE format the trace shows: TDP SPTEs on an Intel host are EPT entries
    (other A/D and MMIO bits); shadow paging always uses the x86 page-table format."""
    if mmu == "tdp":
        t, leaves_only = data.tables["kvm_tdp_mmu_spte_changed"], True
        field = "new_spte"
    elif mmu == "legacy_tdp" and "kvm_mmu_set_spte" in data.tables:
        t, leaves_only, field = data.tables["kvm_mmu_set_spte"], False, "spte"
    else:
        return profile
    present = ept_like = 0
    for batch in t.to_batches():  # a batch at a time, its pages given back: a TDP trace's largest table
        values = numpy_column(batch, field)
        if leaves_only:
            values = values[numpy_column(batch, "level", np.int64) == 1]
        counts = flavour_counts(values, profile)
        present, ept_like = present + counts[0], ept_like + counts[1]
        data.release_pages()
    return ept(profile) if flavour(present, ept_like) == "EPT" else profile


def infer_zap_policy(tl: ms.MemslotTimeline, za_seq: np.ndarray, za_pid: np.ndarray,
                     profile: KernelProfile) -> tuple[str, str]:
    """The VM's policy, one for the whole trace (the quirk is per VM): a single delete/move with a
    zap-all proves zap-all; deletes/moves without one prove zap-slot; else the lab's hint."""
    removing = [c for c in tl.changes if c.kind in ms.REMOVING_KINDS and c.seq is not None]
    with_zap = sum(bool(np.any((za_seq >= c.window_start) & (za_seq <= c.seq) & (za_pid == c.pid))) for c in removing)
    hint = {0: "zap_slot", 1: "zap_all"}.get(tl.quirk_hint) if tl.quirk_hint is not None else None
    if removing:
        policy = "zap_all" if with_zap or hint == "zap_all" else "zap_slot"
        why = f"{with_zap} of {len(removing)} delete/move(s) had a kvm_mmu_zap_all_fast in their window"
        if hint and hint != policy:
            why += f" (the lab marker said {hint}; the trace wins)"
        return policy, why
    if hint:
        return hint, "no delete/move in the trace; lab marker kvmlab_start slot_zap_all_quirk"
    if profile.slot_zap_rule is None:
        return "zap_all", f"kernel era {profile.era} has no per-slot zap"
    return "unknown", "no delete or move in the trace"
