/* mpi_ranks.h — ar-tune's data-parallel ranks over MPI (docs/mpi.md): the
 * communicator behind libar's ar_reducer (reduce.h). Built with MPI when the
 * Makefile finds mpicc (AR_HAVE_MPI); without it, a run started by mpirun
 * with more than one rank is refused. */
#ifndef AR_MPI_RANKS_H
#define AR_MPI_RANKS_H
#include "reduce.h"

/* When the launcher's environment says this process is one of several ranks
 * (Open MPI's OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK): start MPI and
 * return the reducer (rank, size); else NULL, one process, MPI untouched.
 * Any later exit of this process before mpi_ranks_finish ends the whole job
 * (MPI_Abort) with a line naming the rank. Dies with a message when started
 * as several ranks by a build without MPI. */
ar_reducer *mpi_ranks_start(int *argc, char ***argv);

/* Rank 0's out[size] receives every rank's v (collective). 0 or -1. */
int mpi_ranks_gather(ar_reducer *rd, double v, double *out);

/* Finish MPI after a successful run (no-op for NULL). */
void mpi_ranks_finish(ar_reducer *rd);

#endif
