/*
 * trace_marker writer.  QEMU's ftrace backend writes each trace event as ONE write() of
 * "<event> <message>\n" (clamped to 511 bytes); replay tools rely on one line = one
 * ftrace:print event, so we do the same and never split a line.
 *
 * With a QEMU log (--qemu-log FILE) the lines go to FILE instead, in the form of QEMU's "log"
 * trace backend (`-trace kvm_set_user_memory -D FILE`): "TID@SEC.USEC:<event> <message>\n",
 * TID the calling thread and SEC.USEC from gettimeofday() (CLOCK_REALTIME, a clock the trace
 * does not use), so the trace then holds the kernel's events only, as a user's would.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>
#include "kvmlab.h"

static int marker_fd = -1;
static int qemu_log_fd = -1;

void marker_open_qemu_log(const char *path)
{
	qemu_log_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (qemu_log_fd < 0)
		die("open --qemu-log %s", path);
}

/*
 * KVMLAB_MARKER names the marker file (default: tracefs trace_marker); "-" sends markers to
 * stderr, so a dry run does not write into a recording someone else is making.
 */
void marker_open(void)
{
	const char *path = getenv("KVMLAB_MARKER");

	if (qemu_log_fd >= 0)
		return;
	if (!path)
		path = "/sys/kernel/tracing/trace_marker";
	if (!strcmp(path, "-"))
		return;
	marker_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (marker_fd < 0)
		fprintf(stderr, "kvmlab: %s not writable, markers go to stderr\n", path);
}

void marker(const char *fmt, ...)
{
	char buf[512 + 48];
	va_list ap;
	int n = 0, m;

	if (qemu_log_fd >= 0) {
		struct timeval now;

		gettimeofday(&now, NULL);
		n = snprintf(buf, 48, "%ld@%lld.%06ld:", (long)syscall(SYS_gettid),
			     (long long)now.tv_sec, (long)now.tv_usec);
	}
	va_start(ap, fmt);
	m = vsnprintf(buf + n, 511, fmt, ap);
	va_end(ap);
	n += m > 510 ? 510 : m;
	buf[n++] = '\n';
	if (qemu_log_fd >= 0) {
		if (write(qemu_log_fd, buf, n) != n)
			die("write to --qemu-log");
	} else if (marker_fd < 0 || write(marker_fd, buf, n) != n) {
		fwrite(buf, 1, n, stderr);
	}
}
