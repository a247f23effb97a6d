/*
 * VM and memslot plumbing.  Every KVM_SET_USER_MEMORY_REGION is followed by the line QEMU >= 9.0
 * prints for it (accel/kvm: trace_kvm_set_user_memory, written after the ioctl, so the
 * kernel's events for a change come before its marker), preceded by our own
 * kvmlab_memslot_ioctl detail line that also names the kind of change.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "kvmlab.h"

void vm_create(struct vm *vm, bool zap_all_quirk, bool thp)
{
	memset(vm, 0, sizeof(*vm));
	vm->thp = thp;
	pthread_mutex_init(&vm->slot_lock, NULL);
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0)
		die("open /dev/kvm");
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		die("KVM_CREATE_VM");
	vm->run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	vm->zap_all_quirk = zap_all_quirk;
	if (!zap_all_quirk) {
		/* The zap-slot policy: deleting a memslot zaps only that slot's SPTEs. */
		int quirks = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DISABLE_QUIRKS2);
		struct kvm_enable_cap cap = { .cap = KVM_CAP_DISABLE_QUIRKS2 };

		if (quirks < 0 || !(quirks & KVM_X86_QUIRK_SLOT_ZAP_ALL))
			die("KVM_X86_QUIRK_SLOT_ZAP_ALL cannot be disabled on this kernel");
		cap.args[0] = KVM_X86_QUIRK_SLOT_ZAP_ALL;
		if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap))
			die("KVM_CAP_DISABLE_QUIRKS2");
		marker("kvmlab_config quirk_disabled=KVM_X86_QUIRK_SLOT_ZAP_ALL");
	}
}

void vm_enable_manual_protect(struct vm *vm)
{
	/* As QEMU does when the kernel offers it: dirty bits are write-protected lazily on clear. */
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 };
	int have = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);

	if (have <= 0)
		die("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 missing");
	cap.args[0] = have & (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET);
	if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap))
		die("enable KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
	vm->manual_protect = true;
}

static int set_region(struct vm *vm, uint32_t id, uint32_t flags, uint64_t gpa, uint64_t size,
		      void *host)
{
	struct kvm_userspace_memory_region r = {
		.slot = id, .flags = flags, .guest_phys_addr = gpa,
		.memory_size = size, .userspace_addr = (uint64_t)(uintptr_t)host,
	};
	int ret = ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);

	return ret < 0 ? -errno : ret;
}

static void qemu_line(const struct slot *s, uint32_t flags, uint64_t gpa, uint64_t size, int ret)
{
	marker("kvm_set_user_memory AddrSpace#0 Slot#%u flags=0x%x gpa=0x%llx size=0x%llx ua=0x%llx "
	       "guest_memfd=-1 guest_memfd_offset=0x0 ret=%d",
	       s->id, flags, (unsigned long long)gpa, (unsigned long long)size,
	       (unsigned long long)(uintptr_t)s->host, ret);
}

static void detail_line(const struct slot *s, const char *kind, uint32_t flags, uint64_t gpa,
			uint64_t size, int ret)
{
	marker("kvmlab_memslot_ioctl AddrSpace#0 Slot#%u kind=%s flags=0x%x gpa=0x%llx size=0x%llx "
	       "ua=0x%llx name=%s ret=%d",
	       s->id, kind, flags, (unsigned long long)gpa, (unsigned long long)size,
	       (unsigned long long)(uintptr_t)s->host, s->name, ret);
}

/*
 * One KVM_SET_USER_MEMORY_REGION with its marker lines: ours always, QEMU's when QEMU would
 * print one for this ioctl.  Dies on failure (after the markers, as QEMU traces ret < 0 too).
 */
static void region_ioctl(struct vm *vm, const struct slot *s, const char *kind, uint32_t flags,
			 uint64_t gpa, uint64_t size, bool qemu_prints)
{
	int ret = set_region(vm, s->id, flags, gpa, size, s->host);

	detail_line(s, kind, flags, gpa, size, ret);
	if (qemu_prints)
		qemu_line(s, flags, gpa, size, ret);
	if (ret < 0) {
		errno = -ret;
		die("%s of slot %s", kind, s->name);
	}
}

/* QEMU reuses the lowest free slot id; the caller holds slot_lock. */
static struct slot *free_slot(struct vm *vm)
{
	for (int i = 0; i < MAX_SLOTS; i++)
		if (!vm->slots[i].used) {
			vm->slots[i].id = i;
			return &vm->slots[i];
		}
	errno = 0;
	die("out of memslots");
}

/*
 * Host memory for a slot.  With THP the mapping is placed so that ua and gpa agree modulo
 * 2 MiB and marked MADV_HUGEPAGE: only then can KVM back a 2 MiB guest page with a 2 MiB SPTE.
 */
static uint8_t *slot_memory(struct vm *vm, uint64_t gpa, uint64_t size)
{
	const uint64_t huge = 0x200000;
	uint64_t span = size + (vm->thp ? huge : 0);
	uint8_t *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint64_t skip;

	if (p == MAP_FAILED)
		die("mmap %llu bytes", (unsigned long long)span);
	if (!vm->thp)
		return p;
	skip = ((gpa & (huge - 1)) - ((uintptr_t)p & (huge - 1))) & (huge - 1);
	if (skip)
		munmap(p, skip);
	munmap(p + skip + size, huge - skip);
	if (madvise(p + skip, size, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)");
	return p + skip;
}

struct slot *slot_create(struct vm *vm, const char *name, uint64_t gpa, uint64_t size, uint32_t flags)
{
	struct slot *s;

	pthread_mutex_lock(&vm->slot_lock);
	s = free_slot(vm);
	s->used = true;
	s->name = name;
	s->gpa = gpa;
	s->size = size;
	s->flags = flags;
	s->host = slot_memory(vm, gpa, size);
	region_ioctl(vm, s, "create", flags, gpa, size, true);
	pthread_mutex_unlock(&vm->slot_lock);
	return s;
}

void slot_delete(struct vm *vm, struct slot *s)
{
	pthread_mutex_lock(&vm->slot_lock);
	region_ioctl(vm, s, "delete", s->flags, s->gpa, 0, true);
	s->used = false;
	munmap(s->host, s->size);
	s->host = NULL;
	pthread_mutex_unlock(&vm->slot_lock);
}

void slot_set_flags(struct vm *vm, struct slot *s, uint32_t flags)
{
	pthread_mutex_lock(&vm->slot_lock);
	region_ioctl(vm, s, "flags", flags, s->gpa, s->size, true);
	s->flags = flags;
	pthread_mutex_unlock(&vm->slot_lock);
}

void slot_toggle_readonly(struct vm *vm, struct slot *s)
{
	/* KVM refuses a READONLY flip in place; QEMU deletes then re-creates, and prints ONE line. */
	uint32_t flags = s->flags ^ KVM_MEM_READONLY;

	pthread_mutex_lock(&vm->slot_lock);
	region_ioctl(vm, s, "ro-toggle-delete", flags, s->gpa, 0, false);
	region_ioctl(vm, s, "ro-toggle-create", flags, s->gpa, s->size, true);
	s->flags = flags;
	pthread_mutex_unlock(&vm->slot_lock);
}

struct slot *slot_recreate_at(struct vm *vm, struct slot *s, uint64_t gpa)
{
	/* How QEMU moves a BAR: delete at the old gpa, create at the new one (lowest free id). */
	struct slot moved = *s;

	pthread_mutex_lock(&vm->slot_lock);
	region_ioctl(vm, s, "delete", s->flags, s->gpa, 0, true);
	s->used = false;
	s->host = NULL;
	s = free_slot(vm);
	moved.id = s->id;
	moved.gpa = gpa;
	*s = moved;
	region_ioctl(vm, s, "create", s->flags, gpa, s->size, true);
	pthread_mutex_unlock(&vm->slot_lock);
	return s;
}

void slot_move(struct vm *vm, struct slot *s, uint64_t gpa)
{
	/*
	 * A true KVM_MR_MOVE (same id, size and flags, new gpa).  QEMU never does this, so there
	 * is no QEMU line for it: only kvmlab_memslot_move, documented in lab/README.md.
	 */
	int ret;
	uint64_t old = s->gpa;

	pthread_mutex_lock(&vm->slot_lock);
	ret = set_region(vm, s->id, s->flags, gpa, s->size, s->host);
	marker("kvmlab_memslot_move AddrSpace#0 Slot#%u flags=0x%x old_gpa=0x%llx gpa=0x%llx size=0x%llx "
	       "ua=0x%llx name=%s ret=%d",
	       s->id, s->flags, (unsigned long long)old, (unsigned long long)gpa,
	       (unsigned long long)s->size, (unsigned long long)(uintptr_t)s->host, s->name, ret);
	if (ret < 0) {
		errno = -ret;
		die("KVM_MR_MOVE of slot %s", s->name);
	}
	s->gpa = gpa;
	pthread_mutex_unlock(&vm->slot_lock);
}

uint8_t *gpa_to_host(struct vm *vm, uint64_t gpa)
{
	for (int i = 0; i < MAX_SLOTS; i++) {
		struct slot *s = &vm->slots[i];

		if (s->used && gpa >= s->gpa && gpa < s->gpa + s->size)
			return s->host + (gpa - s->gpa);
	}
	die("gpa 0x%llx is in no memslot", (unsigned long long)gpa);
}
