/*
 * VM setup shared by the scenarios, and the worker threads that keep vCPUs running guest code
 * while the main thread changes memslots (that concurrency is what the churn/multi traces are for).
 */
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "lab.h"

void phase(const char *name)
{
	marker("kvmlab_phase name=%s", name);
}

void touch(struct vcpu *v, enum guest_op op, uint64_t gva, uint64_t len, uint64_t stride)
{
	vcpu_op(v, op, gva, len, stride, 0x6b766d6c6162ULL ^ gva);
}

void lab_setup(struct lab *lab, const struct params *p)
{
	struct vm *vm = &lab->vm;

	lab->p = p;
	lab->ram_size = p->ram_mb << 20;
	vm_create(vm, p->zap_all_quirk, p->thp);
	if (p->manual_protect)
		vm_enable_manual_protect(vm);
	marker("kvmlab_start scenario=%s vcpus=%d ram_mb=%llu pid=%d manual_protect=%d "
	       "slot_zap_all_quirk=%d pages=%d huge=%d rounds=%d high_mb=%llu thp=%d",
	       p->scenario, p->vcpus, (unsigned long long)p->ram_mb, (int)getpid(),
	       vm->manual_protect, vm->zap_all_quirk, p->pages, p->huge, p->rounds,
	       (unsigned long long)p->high_mb, vm->thp);
	slot_create(vm, "low", 0, LOW_SIZE, 0);
	slot_create(vm, "ram", GPA_RAM, lab->ram_size, 0);
	guest_code_install(vm);

	/* Every device-like region is mapped up front, so a missing memslot means MMIO, not #PF. */
	lab->pool = (struct pt_pool){ .vm = vm, .next = GPA_PT_POOL, .end = GPA_PT_POOL_END };
	lab->root = pt_build_base(&lab->pool, lab->ram_size);
	pt_map(&lab->pool, lab->root, GPA_ROM, GPA_ROM, 0x200000, true);
	pt_map(&lab->pool, lab->root, GPA_AUDIO_BAR, GPA_AUDIO_BAR, AUDIO_SIZE, false);
	pt_map(&lab->pool, lab->root, GPA_MMIO, GPA_MMIO, MMIO_SIZE, true);
	pt_map(&lab->pool, lab->root, GPA_VGA_BAR, GPA_VGA_BAR, VGA_SIZE, true);
	pt_map(&lab->pool, lab->root, GPA_MOVE_BAR, GPA_MOVE_BAR, 2 * MOVE_SIZE, true);
	pt_map(&lab->pool, lab->root, GPA_DIRTY, GPA_DIRTY, DIRTY_SIZE, false);
	pt_map(&lab->pool, lab->root, GPA_HIGH_BAR, GPA_HIGH_BAR,
	       (p->high_mb << 20) < HIGH_MAPPED ? p->high_mb << 20 : HIGH_MAPPED, true);

	for (int i = 0; i < p->vcpus; i++)
		vcpu_create(vm, &lab->vcpus[i], i, lab->root);
}

void lab_finish(struct lab *lab)
{
	unsigned long long io = 0, mmio = 0;

	for (int i = 0; i < lab->p->vcpus; i++) {
		io += lab->vcpus[i].exits_io;
		mmio += lab->vcpus[i].exits_mmio;
	}
	marker("kvmlab_end scenario=%s io_exits=%llu mmio_exits=%llu", lab->p->scenario, io, mmio);
}

void plan_add(struct worker *w, enum guest_op op, uint64_t gva, uint64_t len, uint64_t stride)
{
	if (w->nplan == MAX_TOUCHES)
		die("worker plan full");
	w->plan[w->nplan++] = (struct touch){ op, gva, len, stride };
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	marker("kvmlab_vcpu_thread vcpu=%d tid=%ld", w->vcpu->id, (long)syscall(SYS_gettid));
	while (!atomic_load(&w->stop)) {
		for (int i = 0; i < w->nplan; i++)
			touch(w->vcpu, w->plan[i].op, w->plan[i].gva, w->plan[i].len, w->plan[i].stride);
		atomic_fetch_add(&w->passes, 1);
	}
	return NULL;
}

void workers_start(struct lab *lab, int n)
{
	for (int i = 0; i < n; i++) {
		struct worker *w = &lab->workers[i];

		w->lab = lab;
		w->vcpu = &lab->vcpus[i];
		if (pthread_create(&w->thread, NULL, worker_main, w))
			die("pthread_create");
	}
}

/* Block until every worker has completed `more_passes` further passes over its plan. */
void workers_wait(struct lab *lab, int n, long more_passes)
{
	long target[MAX_VCPUS];

	for (int i = 0; i < n; i++)
		target[i] = atomic_load(&lab->workers[i].passes) + more_passes;
	for (int i = 0; i < n; i++)
		while (atomic_load(&lab->workers[i].passes) < target[i])
			usleep(100);
}

void workers_stop(struct lab *lab, int n)
{
	for (int i = 0; i < n; i++)
		atomic_store(&lab->workers[i].stop, 1);
	for (int i = 0; i < n; i++)
		pthread_join(lab->workers[i].thread, NULL);
}
