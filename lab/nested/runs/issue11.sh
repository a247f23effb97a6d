# The 2019 scenario (legacy MMU in TDP mode, zap-slot policy, memslot lines only in a QEMU log
# on its own clock). Boot with: ./run_l1.sh issue11 "tdp_mmu=0" "" 1500 6.12
rec_direct tdpmmu0-ptslot-noquirk-qlog-kt ptslot --pages 1024 --rounds 3 --no-zap-all-quirk --qemu-log $O/tdpmmu0-ptslot-noquirk-qlog-kt.qemu.log
rec_direct tdpmmu0-churn-noquirk-qlog-kt churn --rounds 2 --pages 64 --high-mb 8 --no-zap-all-quirk --qemu-log $O/tdpmmu0-churn-noquirk-qlog-kt.qemu.log
