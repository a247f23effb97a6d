/*
 * Guest code, copied byte for byte to GPA_CODE (identity-mapped, user-accessible).
 * Only relative jumps: the bytes run wherever they are copied.
 *
 * guest_worker runs in ring 3, natively on the shadow page tables (that is what makes KVM
 * fault, walk and install SPTEs).  The host loads the arguments with KVM_SET_REGS:
 *   rdi = op (1 read, 2 write, 3 poke list), rsi = start, rdx = length in bytes
 *   (poke: number of pairs), rcx = stride, r8 = value to write.
 * When done it writes port 0x10 (IOPL=3 allows it) and spins there; the host resets RIP.
 *
 * guest_stub runs in ring 0 (the host switches to it with KVM_SET_SREGS; ring-0 code is
 * emulated on this backend): rdi = 1 load CR3 from rsi, 2 INVLPG (rsi); then port 0x11.
 */
	.text
	.code64
	.globl guest_code_start, guest_code_end, guest_stub_offset

guest_code_start:
guest_worker:
	cmp	$1, %rdi
	je	.Lread
	cmp	$2, %rdi
	je	.Lwrite
	cmp	$3, %rdi
	je	.Lpoke
	jmp	.Ldone
.Lread:
	mov	%rsi, %r9
	lea	(%rsi,%rdx), %r10
1:	cmp	%r10, %r9
	jae	.Ldone
	mov	(%r9), %rax
	add	%rcx, %r9
	jmp	1b
.Lwrite:
	mov	%rsi, %r9
	lea	(%rsi,%rdx), %r10
2:	cmp	%r10, %r9
	jae	.Ldone
	mov	%r8, (%r9)
	add	%rcx, %r9
	jmp	2b
.Lpoke:
	test	%rdx, %rdx
	jz	.Ldone
3:	mov	(%rsi), %r9
	mov	8(%rsi), %r10
	mov	%r10, (%r9)
	add	$16, %rsi
	dec	%rdx
	jnz	3b
.Ldone:
	out	%al, $0x10
	jmp	.Ldone

	.balign 64
guest_stub:
	cmp	$1, %rdi
	jne	4f
	mov	%rsi, %cr3
	jmp	5f
4:	invlpg	(%rsi)
5:	out	%al, $0x11
	jmp	5b
guest_code_end:

	.section .rodata
	.balign 8
guest_stub_offset:
	.quad	guest_stub - guest_code_start

	.section .note.GNU-stack,"",@progbits
