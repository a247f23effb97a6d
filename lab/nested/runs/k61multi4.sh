# The same on 6.1 (TDP MMU). Boot with: ./run_l1.sh k61multi4 "" "" 1500 6.1
rec_direct k61tdp-multi4-kt multi --vcpus 4 --rounds 3
