/* kvmlab command line: pick a scenario, its parameters and the memslot-zap policy. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lab.h"

static const struct {
	const char *name;
	int (*run)(struct lab *lab);
	int default_vcpus;
} scenarios[] = {
	{ "boot", scenario_boot, 1 },
	{ "churn", scenario_churn, 1 },
	{ "mmio", scenario_mmio, 1 },
	{ "dirty", scenario_dirty, 1 },
	{ "multi", scenario_multi, 3 },
	{ "rom", scenario_rom, 1 },
	{ "ptslot", scenario_ptslot, 1 },
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvmlab SCENARIO [options]\n"
		"scenarios: boot churn mmio dirty multi rom ptslot\n"
		"  --vcpus N          vCPU threads (multi: default 3, others 1)\n"
		"  --ram-mb N         guest RAM slot size in MiB (default 32)\n"
		"  --pages N          4 KiB pages a touch pass covers (default 256)\n"
		"  --huge N           2 MiB guest pages boot touches (default 2)\n"
		"  --rounds N         churn/mmio/dirty/multi/rom/ptslot rounds (default 3)\n"
		"  --high-mb N        size of the large slot at 0x800000000 in MiB (default 64)\n"
		"  --no-zap-all-quirk disable KVM_X86_QUIRK_SLOT_ZAP_ALL (zap only the slot)\n"
		"  --no-manual-protect  do not enable KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2\n"
		"  --thp              back slots with transparent huge pages (2 MiB SPTEs)\n"
		"  --qemu-log FILE    write every line to FILE as QEMU's log trace backend does\n"
		"                     (TID@SEC.USEC:..., realtime clock) instead of trace_marker\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "vcpus", required_argument, NULL, 'v' },
		{ "ram-mb", required_argument, NULL, 'm' },
		{ "pages", required_argument, NULL, 'p' },
		{ "huge", required_argument, NULL, 'H' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "high-mb", required_argument, NULL, 'b' },
		{ "no-zap-all-quirk", no_argument, NULL, 'z' },
		{ "no-manual-protect", no_argument, NULL, 'M' },
		{ "thp", no_argument, NULL, 't' },
		{ "qemu-log", required_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct params p = {
		.vcpus = 0, .ram_mb = 32, .pages = 256, .huge = 2, .rounds = 3, .high_mb = 64,
		.zap_all_quirk = true, .manual_protect = true,
	};
	static struct lab lab;
	const char *qemu_log = NULL;
	int c, which = -1;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'v': p.vcpus = atoi(optarg); break;
		case 'm': p.ram_mb = strtoull(optarg, NULL, 0); break;
		case 'p': p.pages = atoi(optarg); break;
		case 'H': p.huge = atoi(optarg); break;
		case 'r': p.rounds = atoi(optarg); break;
		case 'b': p.high_mb = strtoull(optarg, NULL, 0); break;
		case 'z': p.zap_all_quirk = false; break;
		case 'M': p.manual_protect = false; break;
		case 't': p.thp = true; break;
		case 'q': qemu_log = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		if (!strcmp(argv[optind], scenarios[i].name))
			which = i;
	if (which < 0) {
		fprintf(stderr, "kvmlab: unknown scenario '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	p.scenario = scenarios[which].name;
	if (p.vcpus == 0)
		p.vcpus = scenarios[which].default_vcpus;
	if (p.vcpus < 1 || p.vcpus > MAX_VCPUS || p.ram_mb < 8 || p.pages < 16 || p.rounds < 1 || p.high_mb < 1) {
		fprintf(stderr, "kvmlab: parameter out of range (vcpus 1-%d, ram-mb >= 8, pages >= 16, rounds >= 1)\n",
			MAX_VCPUS);
		return 2;
	}
	if (qemu_log)
		marker_open_qemu_log(qemu_log);
	marker_open();
	lab_setup(&lab, &p);
	scenarios[which].run(&lab);
	lab_finish(&lab);
	return 0;
}
