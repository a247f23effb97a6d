/*
 * Guest page tables.  Tables are allocated from a pool of guest pages and written through the
 * host mapping; scenarios that want the *guest* to write its own tables (so KVM sees writes to
 * shadowed page tables) build them in a staging pool and replay the entries as guest pokes.
 */
#include <string.h>
#include "kvmlab.h"

uint64_t pt_alloc(struct pt_pool *pool)
{
	uint64_t gpa = pool->next;

	if (gpa + 0x1000 > pool->end)
		die("page-table pool exhausted at 0x%llx", (unsigned long long)gpa);
	pool->next += 0x1000;
	memset(gpa_to_host(pool->vm, gpa), 0, 0x1000);
	return gpa;
}

static uint64_t *entry(struct pt_pool *pool, uint64_t table, uint64_t gva, int level)
{
	unsigned idx = (gva >> (12 + 9 * (level - 1))) & 511;

	return (uint64_t *)gpa_to_host(pool->vm, table) + idx;
}

/* Map [gva, gva+size) to gpa, user-accessible and writable, with 2 MiB or 4 KiB guest pages. */
void pt_map(struct pt_pool *pool, uint64_t root, uint64_t gva, uint64_t gpa, uint64_t size, bool huge)
{
	uint64_t step = huge ? 0x200000 : 0x1000;
	int leaf = huge ? 2 : 1;

	for (uint64_t off = 0; off < size; off += step) {
		uint64_t table = root;

		for (int level = 4; level > leaf; level--) {
			uint64_t *e = entry(pool, table, gva + off, level);

			if (!(*e & PTE_P))
				*e = pt_alloc(pool) | PTE_USER;
			table = *e & ~0xfffULL & ((1ULL << 52) - 1);
		}
		*entry(pool, table, gva + off, leaf) = (gpa + off) | PTE_USER | (huge ? PTE_PS : 0);
	}
}

/*
 * The base address space every scenario starts in: low memory and the first 2 MiB of RAM with
 * 4 KiB pages (GDT, code, page tables, poke list), then RAM up to ram_size split in half:
 * the first half with 4 KiB pages, the second with 2 MiB pages.
 */
uint64_t pt_build_base(struct pt_pool *pool, uint64_t ram_size)
{
	uint64_t root = pt_alloc(pool);
	uint64_t end = GPA_RAM + ram_size;
	uint64_t half = GPA_TOUCH + ((end - GPA_TOUCH) / 2 & ~0x1fffffULL);

	pt_map(pool, root, 0, 0, LOW_SIZE, false);
	pt_map(pool, root, GPA_RAM, GPA_RAM, GPA_TOUCH - GPA_RAM, false);
	pt_map(pool, root, GPA_TOUCH, GPA_TOUCH, half - GPA_TOUCH, false);
	pt_map(pool, root, half, half, (end & ~0x1fffffULL) - half, true);
	return root;
}
