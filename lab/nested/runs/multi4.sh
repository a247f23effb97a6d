# Four vCPUs faulting on the same pages (TDP MMU). Boot with: ./run_l1.sh multi4 "" "" 1500 6.12
rec_direct tdp-multi4-kt multi --vcpus 4 --rounds 3
