/*
 * trace_marker writer.  QEMU's ftrace backend writes each trace event as ONE write() of
 * "<event> <message>\n" (clamped to 511 bytes); replay tools rely on one line = one
 * ftrace:print event, so we do the same and never split a line.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "kvmlab.h"

static int marker_fd = -1;

/*
 * KVMLAB_MARKER names the marker file (default: tracefs trace_marker); "-" sends markers to
 * stderr, so a dry run does not write into a recording someone else is making.
 */
void marker_open(void)
{
	const char *path = getenv("KVMLAB_MARKER");

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
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (marker_fd < 0 || write(marker_fd, buf, n) != n)
		fwrite(buf, 1, n, stderr);
}
