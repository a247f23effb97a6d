/*
 * `dirty`: dirty logging as QEMU drives it during migration, with manual protection
 * (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, initially-set): logging on through a flags-only slot
 * change, rounds of guest writes + KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG (each clear
 * followed by QEMU's kvm_clear_dirty_log line), logging off, then the slot deleted.
 */
#include <stdlib.h>
#include <sys/ioctl.h>
#include "lab.h"

#define PAGE 0x1000ULL

static int popcount_bitmap(const uint64_t *bm, uint64_t words)
{
	int n = 0;

	for (uint64_t i = 0; i < words; i++)
		n += __builtin_popcountll(bm[i]);
	return n;
}

static void sync_dirty_log(struct lab *lab, struct slot *s)
{
	uint64_t pages = s->size / PAGE, words = (pages + 63) / 64;
	uint64_t *bm = calloc(words, 8);
	struct kvm_dirty_log get = { .slot = s->id, .dirty_bitmap = bm };
	struct kvm_clear_dirty_log clr = {
		.slot = s->id, .first_page = 0, .num_pages = pages, .dirty_bitmap = bm,
	};

	if (!bm)
		die("calloc");
	if (ioctl(lab->vm.vm_fd, KVM_GET_DIRTY_LOG, &get))
		die("KVM_GET_DIRTY_LOG");
	marker("kvmlab_dirty_log Slot#%u dirty_pages=%d", s->id, popcount_bitmap(bm, words));
	if (lab->vm.manual_protect) {
		if (ioctl(lab->vm.vm_fd, KVM_CLEAR_DIRTY_LOG, &clr))
			die("KVM_CLEAR_DIRTY_LOG");
		marker("kvm_clear_dirty_log slot#%u start 0x%llx size 0x%llx", s->id,
		       (unsigned long long)clr.first_page, (unsigned long long)clr.num_pages);
	}
	free(bm);
}

int scenario_dirty(struct lab *lab)
{
	struct vcpu *v = &lab->vcpus[0];
	struct slot *s = slot_create(&lab->vm, "vram", GPA_DIRTY, DIRTY_SIZE, 0);

	phase("dirty-before-logging");
	touch(v, OP_WRITE, GPA_DIRTY, DIRTY_SIZE, PAGE);
	slot_set_flags(&lab->vm, s, KVM_MEM_LOG_DIRTY_PAGES);
	for (int r = 0; r < lab->p->rounds; r++) {
		phase("dirty-round");
		sync_dirty_log(lab, s);
		/* A different quarter of the pages each round, plus the first page every time. */
		touch(v, OP_WRITE, GPA_DIRTY + (r % 4) * PAGE, DIRTY_SIZE - (r % 4) * PAGE, 4 * PAGE);
		touch(v, OP_WRITE, GPA_DIRTY, PAGE, PAGE);
	}
	sync_dirty_log(lab, s);
	phase("dirty-logging-off");
	slot_set_flags(&lab->vm, s, 0);
	touch(v, OP_WRITE, GPA_DIRTY, DIRTY_SIZE, 4 * PAGE);
	phase("dirty-delete");
	slot_delete(&lab->vm, s);
	return 0;
}
