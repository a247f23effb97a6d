/*
 * Scenarios about guest page tables: `boot` (touch RAM through 4 KiB and 2 MiB guest pages, then
 * the guest writes a second address space itself, switches to it and edits it while it is live:
 * shadowed guest page tables get write-protected, unsynced and synced) and `ptslot` (the second
 * address space lives in a memslot that is deleted, re-created elsewhere and truly moved).
 */
#include <string.h>
#include "lab.h"

#define PAGE 0x1000ULL

/* Map low memory, the poke list and the touch region (4 KiB pages) into a new root from `pool`. */
static uint64_t build_alt_root(struct pt_pool *pool, uint64_t touch_len)
{
	uint64_t root = pt_alloc(pool);

	pt_map(pool, root, 0, 0, LOW_SIZE, false);
	pt_map(pool, root, GPA_RAM, GPA_RAM, GPA_TOUCH - GPA_RAM, false);
	pt_map(pool, root, GPA_TOUCH, GPA_TOUCH, touch_len, false);
	return root;
}

/*
 * Turn the table pages [first, last) into a poke list at GPA_POKES and clear them, so that the
 * guest, not the host, writes every entry (KVM only sees guest writes).
 */
static uint64_t pokes_from_tables(struct vm *vm, uint64_t first, uint64_t last)
{
	uint64_t *list = (uint64_t *)gpa_to_host(vm, GPA_POKES);
	uint64_t n = 0;

	for (uint64_t page = first; page < last; page += PAGE) {
		uint64_t *e = (uint64_t *)gpa_to_host(vm, page);

		for (int i = 0; i < 512; i++)
			if (e[i]) {
				if ((n + 1) * 16 > GPA_TOUCH - GPA_POKES)
					die("poke list overflows");
				list[2 * n] = page + 8 * i;
				list[2 * n + 1] = e[i];
				n++;
			}
		memset(e, 0, PAGE);
	}
	return n;
}

/* Guest-physical address of the 4 KiB PTE that maps `gva` under `root` (walking the host view). */
static uint64_t pte_address(struct vm *vm, uint64_t root, uint64_t gva)
{
	uint64_t table = root;

	for (int level = 4; level > 1; level--) {
		uint64_t e = ((uint64_t *)gpa_to_host(vm, table))[(gva >> (12 + 9 * (level - 1))) & 511];

		table = e & ~0xfffULL & ((1ULL << 52) - 1);
	}
	return table + 8 * ((gva >> 12) & 511);
}

/*
 * With `root` loaded, the guest aliases the first 8 pages under every page-table page of the
 * touch region onto the 8 pages after them: each first write hits a shadowed, write-protected
 * guest page table, which KVM unsyncs.  With `invlpg`, every 4th aliased page is then INVLPGed
 * (KVM syncs the page); without, the pages stay unsync until the next sync point.
 */
static void alias_live_ptes(struct vcpu *v, uint64_t root, uint64_t len, bool invlpg)
{
	uint64_t *list = (uint64_t *)gpa_to_host(v->vm, GPA_POKES);
	uint64_t n = 0;

	for (uint64_t base = GPA_TOUCH; base < GPA_TOUCH + len; base += 0x200000)
		for (uint64_t gva = base; gva < base + 8 * PAGE; gva += PAGE, n++) {
			list[2 * n] = pte_address(v->vm, root, gva);
			list[2 * n + 1] = (gva + 8 * PAGE) | PTE_USER;
		}
	vcpu_op(v, OP_POKE, GPA_POKES, n, 0, 0);
	for (uint64_t i = 0; invlpg && i < n; i += 4)
		vcpu_invlpg(v, (list[2 * i + 1] & ~0xfffULL) - 8 * PAGE);
}

int scenario_boot(struct lab *lab)
{
	const struct params *p = lab->p;
	struct vcpu *v = &lab->vcpus[0];
	uint64_t len4k = (uint64_t)p->pages * PAGE;
	uint64_t huge_at = GPA_TOUCH + ((lab->ram_size - (GPA_TOUCH - GPA_RAM)) / 2 & ~0x1fffffULL);
	uint64_t first, nlist, alt;

	if (GPA_TOUCH + len4k > huge_at || huge_at + (uint64_t)p->huge * 0x200000 > GPA_RAM + lab->ram_size)
		die("boot: --pages/--huge do not fit in --ram-mb");
	phase("touch-4k-read");
	touch(v, OP_READ, GPA_TOUCH, len4k, PAGE);
	phase("touch-4k-write");
	touch(v, OP_WRITE, GPA_TOUCH, len4k, PAGE);
	phase("touch-2m-read");
	touch(v, OP_READ, huge_at, (uint64_t)p->huge * 0x200000, 4 * PAGE);
	phase("touch-2m-write");
	touch(v, OP_WRITE, huge_at, (uint64_t)p->huge * 0x200000, 4 * PAGE);

	phase("guest-writes-page-tables");
	first = lab->pool.next;
	alt = build_alt_root(&lab->pool, len4k);
	nlist = pokes_from_tables(&lab->vm, first, lab->pool.next);
	vcpu_op(v, OP_POKE, GPA_POKES, nlist, 0, 0);
	vcpu_load_cr3(v, alt);
	phase("touch-own-tables");
	touch(v, OP_WRITE, GPA_TOUCH, len4k, PAGE);

	phase("edit-live-page-tables");
	alias_live_ptes(v, alt, len4k, true);
	touch(v, OP_WRITE, GPA_TOUCH, len4k, PAGE);

	phase("switch-roots");
	vcpu_load_cr3(v, lab->root);
	touch(v, OP_READ, GPA_TOUCH, len4k, PAGE);
	vcpu_load_cr3(v, alt);
	touch(v, OP_READ, GPA_TOUCH, len4k, PAGE);
	vcpu_load_cr3(v, lab->root);
	return 0;
}

/* Build the second address space inside the pt slot at `base` (host writes: the slot is fresh). */
static uint64_t build_in_slot(struct lab *lab, uint64_t base, uint64_t len)
{
	struct pt_pool pool = { .vm = &lab->vm, .next = base, .end = base + PTSLOT_SIZE };
	uint64_t root = build_alt_root(&pool, len);

	/* The slot maps itself, so the guest can edit these tables while they are live. */
	pt_map(&pool, root, base, base, PTSLOT_SIZE, true);
	return root;
}

static void visit(struct lab *lab, uint64_t root, uint64_t len, const char *name)
{
	struct vcpu *v = &lab->vcpus[0];

	phase(name);
	vcpu_load_cr3(v, root);
	touch(v, OP_WRITE, GPA_TOUCH, len, PAGE);
	/* Leave the tables in the slot unsync when the slot is deleted or moved next. */
	alias_live_ptes(v, root, len, false);
	vcpu_load_cr3(v, lab->root);
}

int scenario_ptslot(struct lab *lab)
{
	uint64_t len = (uint64_t)lab->p->pages * PAGE;
	struct slot *s = slot_create(&lab->vm, "pt-slot", GPA_PTSLOT, PTSLOT_SIZE, 0);

	touch(&lab->vcpus[0], OP_WRITE, GPA_TOUCH, len, PAGE);
	visit(lab, build_in_slot(lab, GPA_PTSLOT, len), len, "tables-in-slot");
	for (int r = 0; r < lab->p->rounds; r++) {
		phase("recreate-pt-slot-elsewhere");
		s = slot_recreate_at(&lab->vm, s, GPA_PTSLOT2);
		visit(lab, build_in_slot(lab, GPA_PTSLOT2, len), len, "tables-in-recreated-slot");
		phase("move-pt-slot");
		slot_move(&lab->vm, s, GPA_PTSLOT);
		visit(lab, build_in_slot(lab, GPA_PTSLOT, len), len, "tables-in-moved-slot");
	}
	phase("delete-pt-slot");
	slot_delete(&lab->vm, s);
	touch(&lab->vcpus[0], OP_WRITE, GPA_TOUCH, len, PAGE);
	return 0;
}
