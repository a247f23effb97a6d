/*
 * vCPUs: 64-bit long mode with the worker in ring 3 (the only code that runs natively on this
 * shadow-MMU backend and so makes KVM fault and install SPTEs), and a CPL-0 stub for what ring 3
 * cannot do (CR3 loads, INVLPG): SYSCALL into ring 0 does not work here, so the host switches
 * the vCPU to the stub with KVM_SET_SREGS, lets KVM emulate it, and switches back.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include "kvmlab.h"

extern const uint8_t guest_code_start[], guest_code_end[];
extern const uint64_t guest_stub_offset;

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UCODE 0x1b
#define SEL_UDATA 0x23
#define SEL_TSS   0x28

void guest_code_install(struct vm *vm)
{
	uint64_t *gdt = (uint64_t *)gpa_to_host(vm, GPA_GDT);

	memcpy(gpa_to_host(vm, GPA_CODE), guest_code_start, guest_code_end - guest_code_start);
	/* Flat descriptors; the hidden parts are loaded by KVM_SET_SREGS, the GDT is for show. */
	gdt[1] = 0x00af9b000000ffffULL;  /* kernel code, L=1 */
	gdt[2] = 0x00cf93000000ffffULL;  /* kernel data */
	gdt[3] = 0x00affb000000ffffULL;  /* user code, DPL 3, L=1 */
	gdt[4] = 0x00cff3000000ffffULL;  /* user data, DPL 3 */
	gdt[5] = 0x0000890000000067ULL | ((GPA_TSS & 0xffffff) << 16);  /* 64-bit TSS */
	gdt[6] = 0;
}

static struct kvm_segment seg(uint16_t sel, int type, int dpl, int l, int db)
{
	struct kvm_segment s = {
		.base = 0, .limit = 0xffffffff, .selector = sel, .type = type, .present = 1,
		.dpl = dpl, .db = db, .s = 1, .l = l, .g = 1,
	};
	return s;
}

static void set_mode(struct vcpu *v, int cpl, uint64_t cr3)
{
	struct kvm_sregs sr;

	if (ioctl(v->fd, KVM_GET_SREGS, &sr))
		die("KVM_GET_SREGS");
	if (cpl == 3) {
		sr.cs = seg(SEL_UCODE, 11, 3, 1, 0);
		sr.ds = sr.es = sr.fs = sr.gs = sr.ss = seg(SEL_UDATA, 3, 3, 0, 1);
	} else {
		sr.cs = seg(SEL_KCODE, 11, 0, 1, 0);
		sr.ds = sr.es = sr.fs = sr.gs = sr.ss = seg(SEL_KDATA, 3, 0, 0, 1);
	}
	sr.tr = (struct kvm_segment){ .base = GPA_TSS, .limit = 0x67, .selector = SEL_TSS,
				      .type = 11, .present = 1 };
	sr.ldt = (struct kvm_segment){ .unusable = 1 };
	sr.gdt.base = GPA_GDT;
	sr.gdt.limit = 7 * 8 - 1;
	sr.cr0 = 0x80050033;        /* PG WP AM NE ET MP PE */
	sr.cr4 = 0x20;              /* PAE */
	sr.efer = 0xd00;            /* NXE LMA LME */
	if (cr3)                    /* 0: keep what the guest loaded */
		sr.cr3 = cr3;
	if (ioctl(v->fd, KVM_SET_SREGS, &sr))
		die("KVM_SET_SREGS");
}

void vcpu_create(struct vm *vm, struct vcpu *v, int id, uint64_t cr3)
{
	memset(v, 0, sizeof(*v));
	v->vm = vm;
	v->id = id;
	v->cr3 = cr3;
	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, id);
	if (v->fd < 0)
		die("KVM_CREATE_VCPU %d", id);
	v->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED)
		die("mmap kvm_run");
	set_mode(v, 3, cr3);
}

/* Run until the guest writes `port`; MMIO (no memslot, or a write to a read-only slot) reads as 0xff. */
static void run_until(struct vcpu *v, uint16_t port)
{
	for (;;) {
		struct kvm_run *r = v->run;

		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN vcpu %d", v->id);
		}
		switch (r->exit_reason) {
		case KVM_EXIT_IO:
			v->exits_io++;
			if (r->io.port == port)
				return;
			errno = 0;
			die("vcpu %d: unexpected port 0x%x", v->id, r->io.port);
		case KVM_EXIT_MMIO:
			v->exits_mmio++;
			if (!r->mmio.is_write)
				memset(r->mmio.data, 0xff, sizeof(r->mmio.data));
			break;
		default: {
			struct kvm_regs regs;

			ioctl(v->fd, KVM_GET_REGS, &regs);
			errno = 0;
			die("vcpu %d: exit reason %u at rip 0x%llx (suberror %u)", v->id, r->exit_reason,
			    (unsigned long long)regs.rip, r->internal.suberror);
		}
		}
	}
}

static void set_regs(struct vcpu *v, uint64_t rip, uint64_t rflags, uint64_t rdi, uint64_t rsi,
		     uint64_t rdx, uint64_t rcx, uint64_t r8)
{
	struct kvm_regs regs = {
		.rip = rip, .rflags = rflags, .rdi = rdi, .rsi = rsi, .rdx = rdx, .rcx = rcx, .r8 = r8,
	};

	if (ioctl(v->fd, KVM_SET_REGS, &regs))
		die("KVM_SET_REGS");
}

void vcpu_op(struct vcpu *v, enum guest_op op, uint64_t start, uint64_t len, uint64_t stride, uint64_t val)
{
	set_regs(v, GPA_CODE, 0x3002 /* IOPL=3 */, op, start, len, stride, val);
	run_until(v, PORT_DONE);
}

static void stub(struct vcpu *v, enum stub_op op, uint64_t arg)
{
	set_mode(v, 0, 0);
	set_regs(v, GPA_CODE + guest_stub_offset, 0x2, op, arg, 0, 0, 0);
	run_until(v, PORT_STUB_DONE);
	set_mode(v, 3, 0);
}

void vcpu_load_cr3(struct vcpu *v, uint64_t cr3)
{
	marker("kvmlab_cr3 vcpu=%d cr3=0x%llx", v->id, (unsigned long long)cr3);
	stub(v, STUB_LOAD_CR3, cr3);
	v->cr3 = cr3;
}

void vcpu_invlpg(struct vcpu *v, uint64_t gva)
{
	marker("kvmlab_invlpg vcpu=%d gva=0x%llx", v->id, (unsigned long long)gva);
	stub(v, STUB_INVLPG, gva);
}
