/* The floor for bench/run.py: two empty BPF programs (`return 0`) on the
 * raw tracepoints sys_enter and sys_exit, the hooks the syscalls probe uses.
 * Prints "ids=ENTER,EXIT\n" once both are attached, stays attached until
 * stdin is closed, then exits (which detaches them).
 *
 * Uses the bpf(2) system call directly, so it needs only kernel headers. */
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long bpf(int cmd, union bpf_attr *attr)
{
	return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

static int attach_empty(const char *tracepoint, uint32_t *id)
{
	struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	struct bpf_prog_info info;
	union bpf_attr attr;
	int prog, link;

	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_RAW_TRACEPOINT;
	attr.insns = (uint64_t)(uintptr_t)insns;
	attr.insn_cnt = 2;
	attr.license = (uint64_t)(uintptr_t) "GPL";
	snprintf(attr.prog_name, sizeof(attr.prog_name), "bare_%s", tracepoint);
	prog = (int)bpf(BPF_PROG_LOAD, &attr);
	if (prog < 0) {
		perror("BPF_PROG_LOAD");
		return -1;
	}
	memset(&attr, 0, sizeof(attr));
	attr.raw_tracepoint.name = (uint64_t)(uintptr_t)tracepoint;
	attr.raw_tracepoint.prog_fd = (uint32_t)prog;
	link = (int)bpf(BPF_RAW_TRACEPOINT_OPEN, &attr);
	if (link < 0) {
		perror("BPF_RAW_TRACEPOINT_OPEN");
		return -1;
	}
	memset(&info, 0, sizeof(info));
	memset(&attr, 0, sizeof(attr));
	attr.info.bpf_fd = (uint32_t)prog;
	attr.info.info_len = sizeof(info);
	attr.info.info = (uint64_t)(uintptr_t)&info;
	if (bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) < 0) {
		perror("BPF_OBJ_GET_INFO_BY_FD");
		return -1;
	}
	*id = info.id;
	return 0;
}

int main(void)
{
	uint32_t enter, exit_;
	char byte;

	if (attach_empty("sys_enter", &enter) || attach_empty("sys_exit", &exit_))
		return 1;
	printf("ids=%u,%u\n", enter, exit_);
	fflush(stdout);
	while (read(0, &byte, 1) > 0)
		;
	return 0;
}
