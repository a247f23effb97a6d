/*
 * kvmlab: a raw-ioctl KVM workload that produces real kvmmmu traces.
 *
 * Why C: the guest is a few dozen bytes of hand-written x86-64 (guest.S), the vCPUs and the
 * memslot churner are real threads racing each other (the point of the churn/multi scenarios),
 * and every memslot ioctl must be followed by exactly one marker write, which is easiest to
 * guarantee next to the ioctl itself.  Python's GIL would serialise exactly what we want to race.
 */
#ifndef KVMLAB_H
#define KVMLAB_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>

#ifndef KVM_X86_QUIRK_SLOT_ZAP_ALL
#define KVM_X86_QUIRK_SLOT_ZAP_ALL (1 << 7)
#endif

#define MAX_VCPUS 16
#define MAX_SLOTS 32

/* Guest physical layout (identity-mapped unless a scenario says otherwise). */
#define GPA_GDT        0x1000ULL
#define GPA_TSS        0x1800ULL
#define GPA_CODE       0x2000ULL     /* ring-3 worker, then the CPL-0 stub */
#define GPA_PT_POOL    0x10000ULL    /* page-table pool for the host-built tables */
#define GPA_PT_POOL_END 0xa0000ULL
#define LOW_SIZE       0xa0000ULL
#define GPA_RAM        0x100000ULL
#define GPA_POKES      0x100000ULL   /* poke list: first MiB of RAM, 4 KiB-mapped */
#define GPA_TOUCH      0x200000ULL   /* first RAM the scenarios touch */

/* Port numbers the guest writes to (ring 3 with IOPL=3, or the CPL-0 stub). */
#define PORT_DONE 0x10
#define PORT_STUB_DONE 0x11

/* Worker ops (guest.S). */
enum guest_op { OP_READ = 1, OP_WRITE = 2, OP_POKE = 3 };
/* CPL-0 stub ops. */
enum stub_op { STUB_LOAD_CR3 = 1, STUB_INVLPG = 2 };

/* Page-table entry bits. */
#define PTE_P  0x1ULL
#define PTE_RW 0x2ULL
#define PTE_US 0x4ULL
#define PTE_PS 0x80ULL
#define PTE_USER (PTE_P | PTE_RW | PTE_US)

struct slot {
	bool used;
	uint32_t id;
	uint32_t flags;
	uint64_t gpa, size;
	uint8_t *host;
	const char *name;
};

struct vm {
	int kvm_fd, vm_fd;
	int run_size;
	bool zap_all_quirk;
	bool manual_protect;
	bool thp;           /* slot memory is 2 MiB-aligned to its gpa and MADV_HUGEPAGE */
	struct slot slots[MAX_SLOTS];
	pthread_mutex_t slot_lock;
};

struct vcpu {
	struct vm *vm;
	int id, fd;
	struct kvm_run *run;
	uint64_t cr3;
	uint64_t exits_io, exits_mmio;
};

/* marker.c: ftrace trace_marker writes (or QEMU log lines), one write() per line. */
void marker_open_qemu_log(const char *path);
void marker_open(void);
void marker(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* vm.c: VM, vCPU and memslot plumbing. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void vm_create(struct vm *vm, bool zap_all_quirk, bool thp);
void vm_enable_manual_protect(struct vm *vm);
struct slot *slot_create(struct vm *vm, const char *name, uint64_t gpa, uint64_t size, uint32_t flags);
void slot_delete(struct vm *vm, struct slot *s);
void slot_set_flags(struct vm *vm, struct slot *s, uint32_t flags);
void slot_toggle_readonly(struct vm *vm, struct slot *s);
struct slot *slot_recreate_at(struct vm *vm, struct slot *s, uint64_t gpa);
void slot_move(struct vm *vm, struct slot *s, uint64_t gpa);
uint8_t *gpa_to_host(struct vm *vm, uint64_t gpa);

/* vcpu.c: running guest ops on a vCPU. */
void vcpu_create(struct vm *vm, struct vcpu *v, int id, uint64_t cr3);
void vcpu_op(struct vcpu *v, enum guest_op op, uint64_t start, uint64_t len, uint64_t stride, uint64_t val);
void vcpu_load_cr3(struct vcpu *v, uint64_t cr3);
void vcpu_invlpg(struct vcpu *v, uint64_t gva);
void guest_code_install(struct vm *vm);

/* paging.c: 4-level guest page tables built in a pool of guest pages. */
struct pt_pool {
	struct vm *vm;
	uint64_t next, end;     /* gpa range of free pool pages */
};
uint64_t pt_alloc(struct pt_pool *pool);
void pt_map(struct pt_pool *pool, uint64_t root, uint64_t gva, uint64_t gpa, uint64_t size, bool huge);
uint64_t pt_build_base(struct pt_pool *pool, uint64_t ram_size);

/* main.c: scenario parameters. */
struct params {
	const char *scenario;
	int vcpus;
	uint64_t ram_mb;
	int pages;          /* 4 KiB pages a touch pass covers */
	int huge;           /* 2 MiB guest pages a touch pass covers */
	int rounds;         /* churn / dirty / multi rounds */
	uint64_t high_mb;   /* size of the large slot at 0x800000000 */
	bool zap_all_quirk;
	bool manual_protect;
	bool thp;
};

#endif
