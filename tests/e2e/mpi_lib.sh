# mpi_lib.sh — sourced after lib.sh by the tests that run ar-tune under
# mpirun (mpi.test.sh, ep.test.sh): skip without mpirun; let Open MPI run as
# root (CI runs as root in containers; Open MPI refuses it unless told);
# mpirun_np N ARGS...: no binding, so each rank's one thread may move; more
# ranks than cores need --oversubscribe, under which Open MPI yields the CPU
# while it waits (each exchange then costs a scheduler slice).
command -v mpirun >/dev/null || { echo "skip: mpirun not found (make deps installs openmpi-bin)"; exit 0; }
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mpirun_np() {
  _np=$1; shift
  if [ "$_np" -gt "$(nproc)" ]; then mpirun --oversubscribe --bind-to none -np "$_np" "$@"
  else mpirun --bind-to none -np "$_np" "$@"; fi
}
