"""Kernel profiles: what the bits of a role word and of an SPTE mean on one kernel era.

The trace carries raw integers; their meaning moved between releases (docs/tracepoints.md §3-§5):
role bit 4 flipped sense in 5.17, bits 7-12 were padding before 4.2, the non-present SPTE value
became ``BIT(63)`` in 6.10, the MMU-present bit appeared in 5.13, the MMIO generation moved twice.
Everything version-dependent lives here; the models and detectors ask a :class:`KernelProfile`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from kvmtrace.parsers.errors import TraceError
from kvmtrace.replays.eras import era_for, release


@dataclass(frozen=True)
class RoleField:
    """One bitfield of ``union kvm_mmu_page_role``."""

    name: str
    shift: int
    width: int

    @property
    def bits(self) -> int:
        return ((1 << self.width) - 1) << self.shift

    def words(self) -> str:
        """``name (bit 13)`` / ``name (bits 24-31)``: how limits and evidence name the field."""
        hi = self.shift + self.width - 1
        return f"{self.name} (bit {self.shift})" if self.width == 1 else f"{self.name} (bits {self.shift}-{hi})"


def _layout(*spec: tuple[str, int, int]) -> tuple[RoleField, ...]:
    return tuple(RoleField(n, s, w) for n, s, w in spec)


# Role layouts per era (docs/tracepoints.md §3). Only named fields; padding is left out.
_ROLE_B = _layout(("level", 0, 4), ("cr4_pae", 4, 1), ("quadrant", 5, 2), ("direct", 13, 1), ("access", 14, 3),
                  ("invalid", 17, 1), ("efer_nx", 18, 1), ("cr0_wp", 19, 1), ("smep_andnot_wp", 20, 1))
_ROLE_C = _layout(("level", 0, 4), ("cr4_pae", 4, 1), ("quadrant", 5, 2), ("direct", 7, 1), ("access", 8, 3),
                  ("invalid", 11, 1), ("efer_nx", 12, 1), ("cr0_wp", 13, 1), ("smep_andnot_wp", 14, 1),
                  ("smap_andnot_wp", 15, 1), ("smm", 24, 8))
_ROLE_D = _ROLE_C + _layout(("ad_disabled", 16, 1))
_ROLE_E = _ROLE_D + _layout(("guest_mode", 17, 1))
# From 5.17 bit 4 is has_4_byte_gpte (inverted sense of cr4_pae/gpte_is_8_bytes).
_ROLE_E17 = tuple(RoleField("has_4_byte_gpte", 4, 1) if f.name == "cr4_pae" else f for f in _ROLE_E)
_ROLE_F = _ROLE_E17 + _layout(("passthrough", 18, 1))

#: Every decoded role column name any layout can produce, so decoded tables have one schema.
ROLE_COLUMNS: tuple[str, ...] = (
    "level", "has_4_byte_gpte", "cr4_pae", "quadrant", "direct", "access", "invalid", "efer_nx", "cr0_wp",
    "smep_andnot_wp", "smap_andnot_wp", "ad_disabled", "guest_mode", "passthrough", "smm",
)


@dataclass(frozen=True)
class KernelProfile:
    """Bit meanings for one kernel era (x86-64 host, shadow paging or AMD NPT SPTE flavour)."""

    name: str
    version: tuple[int, int]
    role: tuple[RoleField, ...]
    nonpresent: int  # value of a non-present SPTE (0, or BIT(63) from 6.10)
    mmu_present_bit: int | None  # SPTE_MMU_PRESENT_MASK bit (5.13+), None: "nonzero and not MMIO"
    writable_mask: int = 1 << 1
    accessed_mask: int = 1 << 5  # shadow / NPT; EPT: bit 8 (see ept())
    dirty_mask: int = 1 << 6  # shadow / NPT; EPT: bit 9
    large_mask: int = 1 << 7
    mmio_mask: int = (1 << 51) | 1  # shadow / NPT: an MMIO SPTE has (spte & mask) == value (spte.c)
    mmio_value: int = (1 << 51) | 1
    flavour: str = "shadow/NPT"  # SPTE format: x86 page-table bits, or "EPT" (Intel TDP)
    pfn_mask: int = ((1 << 52) - 1) & ~0xFFF
    #: MMIO generation bit ranges in the SPTE: ((spte_lo, spte_hi, gen_shift), ...).
    mmio_gen: tuple[tuple[int, int, int], ...] = ()
    #: The rule (eras.RULES key) a per-memslot zap follows on this kernel: "gptes" (6.12+ with the
    #: zap-all quirk off), "gfn_2019" (5.1-5.2.10, 4e103134b862), None where deletes always zap all.
    #: Set from the release's era by profile_for; replay(zap_rule=...) may substitute another rule.
    slot_zap_rule: str | None = None
    #: The era (eras.Era.name) the release belongs to: which memslot-removal rule and tracepoints.
    era: str = ""
    #: True when replay(zap_rule=...) substituted a rule other than the era's: findings then test
    #: a hypothesis ("would this rule have zapped what survived?"), not this kernel's behaviour.
    zap_rule_chosen: bool = False
    #: The zap_all_fast generation is a u8 toggling 0/1 (5.4+) rather than a counter.
    gen_toggles: bool = True

    def role_field(self, name: str) -> RoleField | None:
        for f in self.role:
            if f.name == name:
                return f
        return None

    def required_field(self, name: str) -> RoleField:
        """A role field every era has (``level``, ``direct``, ``access``...): its absence is a
        profile table error, not a property of the trace."""
        f = self.role_field(name)
        if f is None:
            raise KeyError(f"kernel era {self.era!r} has no role field {name!r}")
        return f

    def role_bits(self, names: tuple[str, ...] | None = None) -> int:
        """The bits of the named role fields (every field of the era when ``names`` is None)."""
        return sum(f.bits for f in self.role if names is None or f.name in names)

    def uncarried(self, mask: int) -> tuple[RoleField, ...]:
        """The era's role fields not wholly inside ``mask`` (the bits an input carries): text
        prints only some fields, and a field with one bit missing is unknown as a whole."""
        return tuple(sorted((f for f in self.role if f.bits & ~mask), key=lambda f: f.shift))

    # -- vectorised SPTE predicates (numpy uint64 arrays in, bool arrays out) --------------------
    def is_mmio(self, spte: np.ndarray) -> np.ndarray:
        mmio: np.ndarray = (spte & np.uint64(self.mmio_mask)) == np.uint64(self.mmio_value)
        return mmio

    def is_present(self, spte: np.ndarray) -> np.ndarray:
        present: np.ndarray
        if self.mmu_present_bit is not None:
            present = (spte & np.uint64(1 << self.mmu_present_bit)) != 0
        else:
            present = (spte != np.uint64(self.nonpresent)) & ~self.is_mmio(spte)
        return present

    def pfn(self, spte: np.ndarray) -> np.ndarray:
        return (spte & np.uint64(self.pfn_mask)) >> np.uint64(12)

    def mmio_generation(self, spte: np.ndarray) -> np.ndarray:
        """The memslot generation stored in MMIO SPTEs (docs/tracepoints.md §5.2), for decoding SPTE values."""
        gen = np.zeros(len(spte), dtype=np.uint64)
        for lo, hi, shift in self.mmio_gen:
            field = (spte >> np.uint64(lo)) & np.uint64((1 << (hi - lo + 1)) - 1)
            gen |= field << np.uint64(shift)
        return gen

    # -- scalar forms for the replay loop (Python ints) -----------------------------------------
    def mmio(self, spte: int) -> bool:
        return spte & self.mmio_mask == self.mmio_value

    def present(self, spte: int) -> bool:
        if self.mmu_present_bit is not None:
            return bool(spte >> self.mmu_present_bit & 1)
        return spte != self.nonpresent and (spte & self.mmio_mask) != self.mmio_value


def ept(profile: KernelProfile) -> KernelProfile:
    """The same era with Intel EPT SPTEs (TDP on VMX): Accessed/Dirty at bits 8/9 when EPT A/D bits
    are on, and MMIO SPTEs marked by the W|X misconfiguration (plus suppress-#VE from 6.10)
    (docs/tracepoints.md §4.1-§4.2)."""
    ve = 1 << 63 if profile.nonpresent == 1 << 63 else 0
    return replace(profile, name=profile.name + " EPT", accessed_mask=1 << 8, dirty_mask=1 << 9,
                   mmio_mask=0x7 | ve, mmio_value=0x6 | ve, flavour="EPT")


#: EPT leaf SPTEs carry the memory type in bits 3-5 (write-back = 6 for guest RAM); x86 page-table
#: SPTEs have PWT/PCD/Accessed there, so "bits 3-5 == 6" on most leaves means EPT.
EPT_WB_BITS, EPT_WB = 0x38, 0x30


def spte_flavour(values: np.ndarray, profile: KernelProfile) -> str:
    """"EPT" when most present SPTEs look like EPT write-back leaves, else "shadow/NPT"."""
    return flavour(*flavour_counts(values, profile))


def flavour_counts(values: np.ndarray, profile: KernelProfile) -> tuple[int, int]:
    """How many of ``values`` are present SPTEs, and how many of those look like EPT write-back
    leaves (counts add up over pieces of a table)."""
    present = values[profile.is_present(values)] if len(values) else values
    return len(present), int(np.count_nonzero((present & np.uint64(EPT_WB_BITS)) == np.uint64(EPT_WB)))


def flavour(present: int, ept_like: int) -> str:
    """:func:`spte_flavour` from :func:`flavour_counts`."""
    if present < 16:
        return "shadow/NPT"
    return "EPT" if ept_like * 10 >= present * 9 else "shadow/NPT"


_GEN_513 = ((3, 10, 0), (52, 62, 8))
_GEN_506 = ((3, 11, 0), (54, 62, 9))
_GEN_501 = ((3, 11, 0), (52, 61, 9))

# Eras, newest first: (first version, profile). A kernel uses the first profile whose version is
# <= its own. Names say what changed, so a report can show why a layout was chosen.
_ERAS: tuple[KernelProfile, ...] = (
    KernelProfile("6.12+ (role F, nonpresent BIT63, per-slot zap by gptes)", (6, 12), _ROLE_F, 1 << 63, 11,
                  mmio_gen=_GEN_513),
    KernelProfile("6.10-6.11 (role F, nonpresent BIT63)", (6, 10), _ROLE_F, 1 << 63, 11, mmio_gen=_GEN_513),
    KernelProfile("5.19-6.9 (role F, passthrough)", (5, 19), _ROLE_F, 0, 11, mmio_gen=_GEN_513),
    KernelProfile("5.17-5.18 (role E, has_4_byte_gpte)", (5, 17), _ROLE_E17, 0, 11, mmio_gen=_GEN_513),
    KernelProfile("5.13-5.16 (role E, MMU-present bit 11)", (5, 13), _ROLE_E, 0, 11, mmio_gen=_GEN_513),
    KernelProfile("5.6-5.12 (role E)", (5, 6), _ROLE_E, 0, None, mmio_gen=_GEN_506),
    KernelProfile("5.4-5.5 (role E, u8 generation)", (5, 4), _ROLE_E, 0, None, mmio_gen=_GEN_501),
    KernelProfile("5.1-5.3 (role E, no mmu_valid_gen in the page events)", (5, 1), _ROLE_E, 0, None,
                  mmio_gen=_GEN_501, gen_toggles=False),
    KernelProfile("4.20-5.0 (role E)", (4, 20), _ROLE_E, 0, None, gen_toggles=False),
    KernelProfile("4.13-4.19 (role D, ad_disabled)", (4, 13), _ROLE_D, 0, None, gen_toggles=False),
    KernelProfile("4.2-4.12 (role C, smm)", (4, 2), _ROLE_C, 0, None, gen_toggles=False),
    KernelProfile("2.6.35-4.1 (role B, padded)", (2, 6), _ROLE_B, 0, None, gen_toggles=False),
)

def profile_for(kernel: str | None) -> KernelProfile:
    """Pick the profile for a kernel release string (``"6.18.0"``, ``"6.12.107+deb12-amd64"``).

    ``None`` (a trace without a uname option and no ``--kernel``) gets the newest profile: the
    replay then says so in its assumptions.
    """
    full = None
    if kernel is not None:
        full = release(kernel)
        if full is None:
            raise TraceError(f"kernel release {kernel!r} is not of the form MAJOR.MINOR[...]",
                             hint="pass e.g. {kernel} 6.12")
    era = era_for(full)
    version = full[:2] if full else _ERAS[0].version
    for prof in _ERAS:
        if version >= prof.version:
            return replace(prof, slot_zap_rule=era.zap_slot, era=era.name)
    raise TraceError(f"kernel {kernel} predates the kvmmmu layouts kvmtrace knows (2.6.35+)")


def decode_role(table: pa.Table, profile: KernelProfile, column: str = "role", mask: int = 0xFFFFFFFF) -> pa.Table:
    """Append one column per role bitfield of ``profile`` (uint8), extracted vectorised.

    Fields the era does not have, and fields not wholly inside ``mask`` (the role bits the input
    carries: text prints only some), are added as nulls so that tables of every era share a schema.
    """
    if column not in table.column_names:
        return table
    word = np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.uint64)
    for name in ROLE_COLUMNS:
        if name in table.column_names:
            continue
        f = profile.role_field(name)
        if f is None or f.bits & ~mask:
            arr = pa.nulls(len(word), pa.uint8())
        else:
            arr = pa.array(((word >> np.uint64(f.shift)) & np.uint64((1 << f.width) - 1)).astype(np.uint8))
        table = table.append_column(name, arr)
    return table
