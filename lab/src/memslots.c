/*
 * Scenarios where userspace changes memslots the way QEMU does while vCPUs use them:
 * `churn` (PCI BARs toggled while the vCPU runs), `mmio` (a window with no slot, then a slot,
 * then none), `rom` (read-only slots and QEMU's RO<->RW toggles), `multi` (several vCPUs on
 * shared memory while a slot comes and goes).
 */
#include <unistd.h>
#include "lab.h"

#define PAGE 0x1000ULL

int scenario_churn(struct lab *lab)
{
	struct vm *vm = &lab->vm;
	uint64_t high = lab->p->high_mb << 20;
	uint64_t high_touch = high < HIGH_MAPPED ? high : HIGH_MAPPED;
	struct slot *audio = slot_create(vm, "audio-bar", GPA_AUDIO_BAR, AUDIO_SIZE, 0);
	struct slot *vga = slot_create(vm, "vga-bar", GPA_VGA_BAR, VGA_SIZE, 0);
	struct slot *big = slot_create(vm, "high-bar", GPA_HIGH_BAR, high, 0);
	struct slot *mv = slot_create(vm, "move-bar", GPA_MOVE_BAR, MOVE_SIZE, 0);
	struct worker *w = &lab->workers[0];

	plan_add(w, OP_WRITE, GPA_AUDIO_BAR, AUDIO_SIZE, PAGE);
	plan_add(w, OP_READ, GPA_VGA_BAR, VGA_SIZE, 16 * PAGE);
	plan_add(w, OP_WRITE, GPA_HIGH_BAR, high_touch, high_touch / 64);
	plan_add(w, OP_WRITE, GPA_MOVE_BAR, 2 * MOVE_SIZE, 16 * PAGE);
	plan_add(w, OP_WRITE, GPA_TOUCH, (uint64_t)lab->p->pages * PAGE, PAGE);
	phase("churn");
	workers_start(lab, 1);
	for (int r = 0; r < lab->p->rounds; r++) {
		workers_wait(lab, 1, 1);
		slot_delete(vm, audio);
		workers_wait(lab, 1, 1);
		audio = slot_create(vm, "audio-bar", GPA_AUDIO_BAR, AUDIO_SIZE, 0);
		workers_wait(lab, 1, 1);
		slot_delete(vm, vga);
		workers_wait(lab, 1, 1);
		vga = slot_create(vm, "vga-bar", GPA_VGA_BAR, VGA_SIZE, 0);
		workers_wait(lab, 1, 1);
		slot_delete(vm, big);
		workers_wait(lab, 1, 1);
		big = slot_create(vm, "high-bar", GPA_HIGH_BAR, high, 0);
		workers_wait(lab, 1, 1);
		mv = slot_recreate_at(vm, mv, GPA_MOVE_BAR2);
		workers_wait(lab, 1, 1);
		slot_move(vm, mv, GPA_MOVE_BAR);
	}
	workers_wait(lab, 1, 1);
	workers_stop(lab, 1);
	return 0;
}

int scenario_mmio(struct lab *lab)
{
	struct vcpu *v = &lab->vcpus[0];
	uint64_t len = 16 * PAGE;

	for (int r = 0; r < lab->p->rounds; r++) {
		struct slot *s;

		phase("mmio-no-slot");
		touch(v, OP_READ, GPA_MMIO, len, PAGE);
		touch(v, OP_WRITE, GPA_MMIO, len, PAGE);
		s = slot_create(&lab->vm, "mmio-window", GPA_MMIO, MMIO_SIZE, 0);
		phase("mmio-slot-present");
		touch(v, OP_READ, GPA_MMIO, len, PAGE);
		touch(v, OP_WRITE, GPA_MMIO, len, PAGE);
		slot_delete(&lab->vm, s);
		phase("mmio-slot-gone");
		touch(v, OP_READ, GPA_MMIO, len, PAGE);
		touch(v, OP_WRITE, GPA_MMIO, len, PAGE);
	}
	return 0;
}

int scenario_rom(struct lab *lab)
{
	struct vcpu *v = &lab->vcpus[0];
	struct slot *rom = slot_create(&lab->vm, "rom", GPA_ROM, ROM_SIZE, KVM_MEM_READONLY);
	uint64_t len = 64 * PAGE;

	for (int r = 0; r < lab->p->rounds; r++) {
		phase("rom-read");
		touch(v, OP_READ, GPA_ROM, len, PAGE);
		phase("rom-write-traps");
		touch(v, OP_WRITE, GPA_ROM, 8 * PAGE, PAGE);
		slot_toggle_readonly(&lab->vm, rom);
		phase("ram-write");
		touch(v, OP_WRITE, GPA_ROM, len, PAGE);
		slot_toggle_readonly(&lab->vm, rom);
		phase("rom-again");
		touch(v, OP_WRITE, GPA_ROM, 8 * PAGE, PAGE);
		touch(v, OP_READ, GPA_ROM, len, PAGE);
	}
	slot_delete(&lab->vm, rom);
	touch(v, OP_READ, GPA_ROM, 8 * PAGE, PAGE);
	return 0;
}

int scenario_multi(struct lab *lab)
{
	int n = lab->p->vcpus;
	uint64_t len = (uint64_t)lab->p->pages * PAGE;
	uint64_t own = len / n & ~(PAGE - 1);
	struct slot *bar = slot_create(&lab->vm, "shared-bar", GPA_MOVE_BAR, MOVE_SIZE, 0);

	/* All vCPUs write the whole shared region; each also reads its own slice of it. */
	for (int i = 0; i < n; i++) {
		plan_add(&lab->workers[i], OP_WRITE, GPA_TOUCH, len, PAGE);
		plan_add(&lab->workers[i], OP_READ, GPA_TOUCH + i * own, own, PAGE);
		plan_add(&lab->workers[i], OP_WRITE, GPA_MOVE_BAR, MOVE_SIZE, 4 * PAGE);
	}
	phase("multi");
	workers_start(lab, n);
	for (int r = 0; r < lab->p->rounds; r++) {
		workers_wait(lab, n, 1);
		slot_delete(&lab->vm, bar);
		workers_wait(lab, n, 1);
		bar = slot_create(&lab->vm, "shared-bar", GPA_MOVE_BAR, MOVE_SIZE, 0);
	}
	workers_wait(lab, n, 1);
	workers_stop(lab, n);
	return 0;
}
