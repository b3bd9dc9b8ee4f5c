#!/usr/bin/env bash
# Sequence-parallel bidirectional attention on 1, 2 and 4 ranks of this machine (an MPI build with
# the benchmarks: cmake -B build-mpi -DXATTN_MPI=ON && cmake --build build-mpi --target
# bench_mpi_bidir), then the long demonstration: sequences whose three B*H*I*J matrices would
# take hundreds of GB, run across 4 ranks in a few MB per rank. One JSON line per run
# (bench/mpi_bidir.c says what each field is) into bench/results/mpi_scaling.jsonl (or $OUT).
#   bash bench/mpi_scaling.sh [BUILD_DIR]           # the measured points of docs/distributed.md
#   QUICK=1 bash bench/mpi_scaling.sh               # small sizes only, printed, not saved
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-mpi}/bench_mpi_bidir
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
CORES=$(nproc)
out=${OUT:-bench/results/mpi_scaling.jsonl}
[ "${QUICK:-0}" = 1 ] && out=/dev/null
: >"$out"
run() { # NP ARGS...: one rank per core as long as there are cores (threads split among ranks)
    local np=$1
    shift
    local th=$((CORES / np))
    [ "$th" -lt 1 ] && th=1
    OMP_NUM_THREADS=$th mpirun --oversubscribe -np "$np" "$B" --threads "$th" "$@" | tee -a "$out"
}
sizes="2048 4096"
[ "${QUICK:-0}" = 1 ] && sizes="1024"
for n in $sizes; do
    for bwd in "" --backward; do
        for np in 1 2 4; do run "$np" --I "$n" --J "$n" --H 8 --dh 64 --reps 3 $bwd; done
    done
done
[ "${QUICK:-0}" = 1 ] && exit 0
# the long one: I = J = 65536, H = 4, dh = 16: three B*H*I*J float32 matrices = 206 GB
run 4 --I 65536 --J 65536 --H 4 --dh 16 --reps 1
