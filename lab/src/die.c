/*
 * The one way the lab gives up: a message, the errno it failed with, exit status 1. Kept in its
 * own file because every other file calls it (in vm.c it tied vm.c and marker.c in a loop).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kvmlab.h"

void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "kvmlab: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (errno)
		fprintf(stderr, " (%s)", strerror(errno));
	fputc('\n', stderr);
	exit(1);
}
