"""``memslot_zap_miss``: shadow pages a per-slot zap left alive that the kernel's rule must zap.

Reads the model's snapshot taken just after the change's QEMU line (by then the ioctl has
returned, so every zap the kernel owed is done). Under the zap-slot policy (no zap-all in the
window), a live, valid page the rule names is a miss. The rules are data (:mod:`eras`, with their
kernel sources): ``gptes`` (6.12+ with KVM_X86_QUIRK_SLOT_ZAP_ALL off), ``gfn_2019`` (what
4e103134b862 shipped in 5.1-5.2.10) and the never-merged ``level_mask_2019`` proposal of the
2019 'Zap only the relevant pages when removing a memslot' thread (docs/threads.md §1).

Which rule: the trace kernel's own (findings are errors), or one the caller names with
``replay(zap_rule=...)``; a rule that is not this kernel's answers "would this rule have zapped
the pages that survived?", so its findings are ``info`` and say which rule and whether it shipped.

Text input carries only the printed role bits (``PageBook.role_mask``): the rule is evaluated
when the bits it reads are printed. ``passthrough`` (5.19+) never is; only an indirect level-5
root can have it (kvm_init_shadow_npt_mmu sets it on the root of a 5-level host shadowing L1's
4-level NPT; mmu_alloc_root clears it at or below the guest's level, kvm_mmu_child_role for every
child), so the rule's outcome differs from "indirect" on no other page, and such a root that
survives a delete is left unjudged and named.

Nested guests on a TDP host: the TDP MMU's own pages are direct and not in the shadow-page hash,
but L2's shadow pages (indirect, ``guest_mode``) are, and the per-slot zap must destroy them, so
the check runs on a TDP trace over its indirect pages instead of being skipped.
"""

from __future__ import annotations

import numpy as np

from kvmtrace.replays.detectors.context import Context
from kvmtrace.replays.detectors.slot_removal import SHADOW_KINDS
from kvmtrace.replays.eras import RULES, Pages, ZapRule
from kvmtrace.replays.findings import CheckOutcome, Finding
from kvmtrace.replays.memslots import REMOVING_KINDS
from kvmtrace.replays.pages import NONE
from kvmtrace.replays.profiles import KernelProfile

#: The what-if's zap-slot side on kernels that never zap per slot: the current upstream rule.
WHATIF_DEFAULT = "gptes"
#: x86's largest huge-page level with 1 GiB pages (PT_PDPE_LEVEL), where the proposal starts.
_MAX_HUGE_LEVEL = 3
#: The role fields each rule reads.
_READS = {Pages.ALL: ("invalid",), Pages.GFN_MATCH: ("invalid",), Pages.GPTES: ("invalid", "direct", "passthrough"),
          Pages.LEVEL_MASK: ("invalid", "level")}
#: The only level a passthrough page has: a 5-level root over L1's 4-level NPT (PT64_ROOT_5LEVEL).
_PASSTHROUGH_LEVEL = 5


def detect(ctx: Context) -> list[CheckOutcome]:
    return [_zap_miss(ctx)]


def _bits(role: np.ndarray, profile: KernelProfile, name: str, width: int = 1) -> np.ndarray:
    f = profile.role_field(name)
    if f is None:
        return np.zeros(len(role), dtype=np.uint64)
    return (role >> np.uint64(f.shift)) & np.uint64((1 << width) - 1)


def rule_mask(rule: ZapRule, profile: KernelProfile, gfn: np.ndarray, role: np.ndarray, base: int,
              npages: int) -> np.ndarray:
    """Pages ``rule`` destroys when the range ``[base, base+npages)`` is removed (validity by
    generation is the caller's: the pages here are live ones). Pages with ``role.invalid`` (roots
    waiting for their last reference) are never found by the hash walks (``for_each_valid_sp``)."""
    gfn = gfn.astype(np.uint64)
    valid: np.ndarray = _bits(role, profile, "invalid") == 0
    in_slot: np.ndarray = (gfn >= np.uint64(base)) & (gfn < np.uint64(base + npages))
    if rule.pages is Pages.ALL:
        return valid
    matched: np.ndarray = valid & in_slot
    if rule.pages is Pages.GFN_MATCH:
        return matched
    if rule.pages is Pages.GPTES:
        gptes: np.ndarray = matched & (_bits(role, profile, "direct") == 0) & (_bits(role, profile, "passthrough") == 0)
        return gptes
    # The proposal: skip levels above the slot's largest possible page, then the level+1 mask.
    level = _bits(role, profile, "level", 4)
    max_level = _MAX_HUGE_LEVEL
    while max_level > 1 and npages < 512 ** (max_level - 1):
        max_level -= 1
    mask = ~(np.left_shift(np.uint64(1), np.uint64(9) * level) - np.uint64(1))
    last = np.uint64(base + npages - 1)
    return valid & (level <= np.uint64(max_level)) & (gfn >= (np.uint64(base) & mask)) & (gfn <= (last & mask))


def whatif_rule(profile: KernelProfile) -> ZapRule:
    """The zap-slot rule the what-if, the zap ledger and the consequences apply: the profile's, or
    the upstream one where the kernel has none (so every era can be asked what zap-slot would do)."""
    return RULES[profile.slot_zap_rule or WHATIF_DEFAULT]


def zap_rule_mask(profile: KernelProfile, gfn: np.ndarray, role: np.ndarray, base: int, npages: int) -> np.ndarray:
    """The pages (by ``gfn`` and ``role``) the what-if's zap-slot removes for the slot ``base``..+``npages``."""
    return rule_mask(whatif_rule(profile), profile, gfn, role, base, npages)


def _zap_miss(ctx: Context) -> CheckOutcome:
    cid = "memslot_zap_miss"
    p = ctx.profile
    if ctx.mmu not in (*SHADOW_KINDS, "tdp"):
        return CheckOutcome.skipped(cid, "no shadow-page events")
    if p.slot_zap_rule is None:
        return CheckOutcome.skipped(cid, f"kernel era {p.era} has no per-slot zap: a delete or move zaps every page")
    rule = RULES[p.slot_zap_rule]
    unknown = {f.name: f for f in p.uncarried(ctx.pages.role_mask)}
    reads = _READS[rule.pages] + (("direct",) if ctx.mmu == "tdp" else ())
    # passthrough can be settled from level and direct (module docstring); any other unprinted bit cannot
    doubt_passthrough = "passthrough" in unknown and "passthrough" in reads
    lacking = [unknown[n].words() for n in reads + (("level", "direct") if doubt_passthrough else ())
               if n in unknown and n != "passthrough"]
    if lacking:
        return CheckOutcome.skipped(cid, f"rule {rule.name} reads role bits this input does not carry: "
                                         f"{', '.join(dict.fromkeys(lacking))}")
    removals = [(i, c) for i, c in ctx.positioned_removals() if not ctx.expects_zap_all(c)]
    unplaced = sum(c.seq is None and c.kind in REMOVING_KINDS and bool(c.old_npages) for c in ctx.timeline.changes)
    lost = (f"; {unplaced} delete/move(s) of the QEMU log could not be placed on the trace and are not evaluated "
            f"(see the memslot timeline's placement)") if unplaced else ""
    if not removals:
        return CheckOutcome.skipped(cid, "no memslot delete or move under the zap-slot policy in the trace" + lost)
    pages = ctx.pages.arrays()
    nested_only = ctx.mmu == "tdp"
    if nested_only and not np.any(_bits(pages["role"], p, "direct") == 0):
        return CheckOutcome.skipped(cid, "TDP MMU pages are direct and not in the shadow-page hash, and the trace has "
                                         "no indirect (nested guest_mode) shadow page the per-slot zap must destroy")
    own = not p.zap_rule_chosen
    applied = rule.label() if own else f"{rule.label()}; not this kernel's rule ({p.era}), so findings are info"
    shipped = f"rule of {rule.kernels}" if rule.shipped else "hypothesis, never shipped"
    tag = f" [{shipped}; this kernel did not have to zap it]"
    findings: list[Finding] = []
    roots: set[int] = set()  # indirect level-5 roots left alive (could be passthrough, which is not printed)
    shared: set[int] = set()  # pages whose printed identity another page took while they lived (text)
    for i, c in removals:
        # positioned: a seq, its window (every placed change has one) and the range it removed
        assert c.seq is not None and c.window_start is not None
        assert c.old_base_gfn is not None and c.old_npages is not None
        snap = ctx.journal.snapshots.get((i, "end"))
        ids = snap.pages() if snap is not None else None
        if ids is None or not len(ids):
            continue
        role = pages["role"][ids]
        keep = (pages["obsolete_seq"][ids] == NONE) & (pages["first_seq"][ids] < c.seq)
        keep &= rule_mask(rule, p, pages["gfn"][ids], role, c.old_base_gfn, c.old_npages)
        if nested_only:
            keep &= _bits(role, p, "direct") == 0
        if doubt_passthrough:
            maybe = keep & (_bits(role, p, "direct") == 0) & (_bits(role, p, "level", 4) == _PASSTHROUGH_LEVEL)
            roots.update(ids[maybe].tolist())
            keep &= ~maybe
        gone = keep & (pages["shared_seq"][ids] != NONE) & (pages["shared_seq"][ids] < c.seq)
        shared.update(ids[gone].tolist())
        keep &= ~gone
        for k in ids[keep][:64]:
            k = int(k)
            findings.append(Finding(
                cid, c.seq, int(pages["gfn"][k]), c.slot,
                f"{c.kind} of slot {c.slot} (gfns {c.old_base_gfn:#x}+{c.old_npages:#x}) left shadow page {k} "
                f"(gfn {int(pages['gfn'][k]):#x} role {_role_words(int(pages['role'][k]), ctx.pages.role_mask)}) "
                f"alive; rule {rule.name}: "
                f"{rule.words}{'' if own else tag}",
                [int(pages["first_seq"][k]), c.window_start, c.seq], severity="" if own else "info"))
    what = "indirect (nested guest_mode) pages on a TDP host" if nested_only else "shadow pages"
    text = ""
    if doubt_passthrough:
        bit = unknown["passthrough"].words()
        text = (f"; {bit} is not printed and only an indirect level-5 root can have it: " +
                (f"{len(roots)} such root(s) left alive (page(s) {sorted(roots)[:8]}) are not judged, since with "
                 "passthrough set they hold no guest PTEs and the rule spares them"
                 if roots else "no such root was alive after a delete/move, so the outcome is the same"))
    if shared:
        text += (f"; {len(shared)} page(s) left alive (page(s) {sorted(shared)[:8]}) are not judged: a page of the "
                 "same gfn and printed role bits was created while they lived, so each was either zapped without "
                 "a trace or differs in role bits the text does not print")
    done = f"{len(removals)} zap-slot delete/move(s) checked over {what}; rule applied: {applied}{lost}{text}"
    if (roots or shared) and not findings:
        return CheckOutcome.skipped(cid, f"no page left alive that the rule certainly zaps; {done}")
    return CheckOutcome.of(cid, findings, done,
                           f"{len(findings)} page(s) left alive among {what}; rule applied: {applied}{lost}{text}")


def _role_words(role: int, mask: int) -> str:
    """A page's role as findings show it: the word, or on text its printed bits and which they are."""
    return f"{role:#x}" if mask == 0xFFFFFFFF else f"{role:#x}, printed bits {mask:#x}"
