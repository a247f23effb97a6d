/* The lab: one VM with its base memslots and address space, shared by all scenarios. */
#ifndef LAB_H
#define LAB_H

#include <stdatomic.h>
#include "kvmlab.h"

/* Guest addresses of the device-like regions (identity-mapped in the base address space). */
#define GPA_ROM        0xc0000000ULL   /* 1 MiB read-only slot under a 2 MiB guest page */
#define GPA_AUDIO_BAR  0xc1080000ULL   /* 16 KiB, not 2 MiB aligned */
#define GPA_MMIO       0xe0000000ULL   /* a window with no memslot (at first) */
#define GPA_VGA_BAR    0xfd000000ULL   /* 16 MiB */
#define GPA_MOVE_BAR   0xfe000000ULL   /* 2 MiB, moves to GPA_MOVE_BAR2 and back */
#define GPA_MOVE_BAR2  0xfe200000ULL
#define GPA_DIRTY      0x10000000ULL   /* dirty-logged slot, 4 KiB guest pages */
#define GPA_PTSLOT     0x20000000ULL   /* slot holding a second set of guest page tables */
#define GPA_PTSLOT2    0x20400000ULL
#define GPA_HIGH_BAR   0x800000000ULL  /* large 64-bit BAR */
#define AUDIO_SIZE     0x4000ULL
#define VGA_SIZE       0x1000000ULL
#define MOVE_SIZE      0x200000ULL
#define DIRTY_SIZE     0x400000ULL
#define PTSLOT_SIZE    0x200000ULL
#define ROM_SIZE       0x100000ULL
#define MMIO_SIZE      0x200000ULL
#define HIGH_MAPPED    0x4000000ULL    /* guest maps at most this much of the large slot */

struct touch {
	enum guest_op op;
	uint64_t gva, len, stride;
};

#define MAX_TOUCHES 16

/* A vCPU thread repeating a list of touches until told to stop. */
struct worker {
	struct lab *lab;
	struct vcpu *vcpu;
	struct touch plan[MAX_TOUCHES];
	int nplan;
	atomic_int stop;
	atomic_long passes;
	pthread_t thread;
};

struct lab {
	const struct params *p;
	struct vm vm;
	struct pt_pool pool;
	uint64_t root;
	struct vcpu vcpus[MAX_VCPUS];
	struct worker workers[MAX_VCPUS];
	uint64_t ram_size;
};

void lab_setup(struct lab *lab, const struct params *p);
void lab_finish(struct lab *lab);
void phase(const char *name);
void touch(struct vcpu *v, enum guest_op op, uint64_t gva, uint64_t len, uint64_t stride);
void plan_add(struct worker *w, enum guest_op op, uint64_t gva, uint64_t len, uint64_t stride);
void workers_start(struct lab *lab, int n);
void workers_wait(struct lab *lab, int n, long more_passes);
void workers_stop(struct lab *lab, int n);

int scenario_boot(struct lab *lab);
int scenario_churn(struct lab *lab);
int scenario_mmio(struct lab *lab);
int scenario_dirty(struct lab *lab);
int scenario_multi(struct lab *lab);
int scenario_rom(struct lab *lab);
int scenario_ptslot(struct lab *lab);

#endif
