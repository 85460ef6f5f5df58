# ar — SignRound quantization as small Unix tools.
# make deps   install the Debian packages we build against (idempotent; needs root or sudo)
# make        build every tool into bin/
# make test   unit tests (Criterion, also under the other OpenBLAS kernels) and end-to-end shell tests
# make bench  benchmarks (never part of test; AR_BENCH_PEER=1 adds tests/bench/peer.sh)

CC      ?= cc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
PKGS    := libzstd libcjson libpcre2-8 libutf8proc openblas
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
# libar/ is split by concept (libar/README.md); its folders are include roots,
# so a header is named by its file name alone wherever it lives.
LIB_DIRS := $(sort $(patsubst %/,%,$(dir $(wildcard libar/*/*.h))))
LIB_INC  := $(addprefix -I,$(LIB_DIRS))
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fPIC -pthread -fopenmp $(LIB_INC) -Iformats \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -pthread -fopenmp
SHARED  ?= $(abspath ../shared)
PREFIX  ?= /usr/local

# SANITIZE=1: everything (library, tools, unit tests, fuzz replays) built with
# ASan+UBSan into build/asan, tools into build/asan/bin so e2e tests run the
# sanitized tools; any report fails the test that triggered it.
ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
LDFLAGS += -fsanitize=address,undefined
BUILD   ?= build/asan
BIN     ?= build/asan/bin
export ASAN_OPTIONS ?= detect_leaks=0:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS ?= print_stacktrace=1:halt_on_error=1
else
BUILD   ?= build/obj
BIN     ?= bin
endif

LIB_SRC  := $(wildcard libar/*/*.c)
FMT_SRC  := $(wildcard formats/*.c)
CLI_SRC  := $(filter-out cmd/ar-% cmd/auto-round% cmd/mpi_ranks.c,$(wildcard cmd/*.c))
TOOL_SRC := $(wildcard cmd/ar-*.c cmd/auto-round*.c)
TOOLS    := $(patsubst cmd/%.c,$(BIN)/%,$(TOOL_SRC))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNITS    := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
TESTLIB_SRC := $(filter-out tests/unit/test_%,$(wildcard tests/unit/*.c))

LIB_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC))
FMT_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(FMT_SRC))
CLI_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(CLI_SRC))
TESTLIB_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(TESTLIB_SRC))

# CUDA kernels: built when nvcc exists, skipped cleanly otherwise.
CU_SRC   := $(wildcard kernels/*.cu)
ifneq ($(strip $(NVCC)),)
ifneq ($(strip $(CU_SRC)),)
CU_OBJ   := $(patsubst %.cu,$(BUILD)/%.o,$(CU_SRC))
CUDA_DIR := $(patsubst %/bin/nvcc,%,$(NVCC))
CFLAGS   += -DAR_HAVE_CUDA
LDLIBS   += -L$(CUDA_DIR)/lib64 -Wl,-rpath,$(CUDA_DIR)/lib64 -lcudart -lcublas -lstdc++
endif
endif
# bf16 GEMMs (libar/nn/gemm.c): built when oneDNN's headers exist
# (libdnnl-dev), skipped cleanly otherwise; used at run time only on CPUs
# with AVX512-BF16 or AMX.
DNNL_H   ?= $(wildcard /usr/include/dnnl.h /usr/local/include/dnnl.h)
ifneq ($(strip $(DNNL_H)),)
CFLAGS   += -DAR_HAVE_DNNL
LDLIBS   += -ldnnl
endif
# Data-parallel ranks of ar-tune (cmd/mpi_ranks.c, docs/mpi.md): built with
# MPI when mpicc exists (libopenmpi-dev), without it otherwise; only ar-tune
# links it, and libar stays MPI-free (libar/tune/reduce.h).
MPICC    ?= $(shell command -v mpicc 2>/dev/null)
ifneq ($(strip $(MPICC)),)
MPI_CFLAGS := -DAR_HAVE_MPI $(shell $(MPICC) --showme:compile 2>/dev/null)
MPI_LIBS   := $(shell $(MPICC) --showme:link 2>/dev/null)
endif
$(BUILD)/cmd/mpi_ranks.o: CFLAGS += $(MPI_CFLAGS)
NVCCFLAGS ?= -O2 -std=c++17 -fmad=false -Xcompiler -fPIC $(LIB_INC) -Ikernels \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90

.PHONY: all deps test unit unit-kernels e2e bench clean install check-clients demo fuzz fuzz-replay cuda-check check-deps
all: $(TOOLS)

deps:
	@sh tools/install-deps.sh

$(BUILD)/libar.a: $(LIB_OBJ) $(CU_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/libarformats.a: $(FMT_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/kernels/%.o: kernels/%.cu $(wildcard kernels/*.h kernels/*.cuh)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BIN)/%: $(BUILD)/cmd/%.o $(CLI_OBJ) $(BUILD)/libarformats.a $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# ar-tune alone links MPI (above)
$(BIN)/ar-tune: $(BUILD)/cmd/ar-tune.o $(BUILD)/cmd/mpi_ranks.o $(CLI_OBJ) $(BUILD)/libarformats.a $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(MPI_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TESTLIB_OBJ) $(BUILD)/libarformats.a $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcriterion

test: unit unit-kernels e2e

# Each unit binary runs on its own so one failure names its area. An
# OPENBLAS_CORETYPE whose kernels OpenBLAS would load but this CPU cannot
# execute is refused up front (it would crash every BLAS test with SIGILL);
# one OpenBLAS does not know falls back to its own choice, with a line.
unit: $(UNITS)
	@sh tests/unit/kernels.sh --check "$$OPENBLAS_CORETYPE" $(BUILD)/tests/test_ops
	@fail=0; for t in $(UNITS); do echo "== $$t"; AR_SHARED=$(SHARED) $$t --jobs 2 || fail=1; done; exit $$fail

# The unit binaries again under the other OpenBLAS kernels this CPU can run
# (tests/unit/kernels.sh skips, with a line each, the ones it cannot, the ones
# OpenBLAS lacks and the default one `unit` ran), so an assertion that depends
# on a kernel's summation order fails on every machine. Tolerances come from
# error bounds that hold for any order (tests/unit/fixture.h). Not under
# SANITIZE=1: the kernels are not instrumented and the sanitized run is slow.
ifeq ($(SANITIZE),1)
UNIT_CORETYPES ?=
else
UNIT_CORETYPES ?= Haswell SkylakeX Zen
endif
unit-kernels: $(UNITS)
	@AR_SHARED=$(SHARED) sh tests/unit/kernels.sh "$(UNIT_CORETYPES)" $(UNITS)

e2e: $(TOOLS)
	@AR_SHARED=$(SHARED) AR_BIN=$(abspath $(BIN)) sh tests/e2e/run.sh

# Benchmark helpers: each tests/bench/NAME.c becomes $(BUILD)/bench/NAME.
BENCH_BIN := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(wildcard tests/bench/*.c))
$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bench: $(TOOLS) $(BENCH_BIN)
	@AR_SHARED=$(SHARED) AR_BIN=$(abspath $(BIN)) AR_BENCH_BIN=$(abspath $(BUILD)/bench) sh tests/bench/run.sh

# ---- fuzzing (tests/fuzz/README.md) ------------------------------------------
# make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="gguf stream"]: build each
# tests/fuzz/fuzz_NAME.c with clang's libFuzzer+ASan+UBSan into build/fuzz and
# run it for FUZZ_SECONDS over tests/fuzz/corpus/NAME (new inputs go to
# build/fuzz/corpus/NAME, crashes to build/fuzz/crashes/NAME/). `make test`
# replays the seeds and tests/fuzz/regressions/NAME through each target built
# with the normal compiler (fuzz-replay).
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_OUT     := build/fuzz
FUZZ_CFLAGS  := -O1 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -pthread -fopenmp $(LIB_INC) -Iformats \
                $(shell pkg-config --cflags $(PKGS) 2>/dev/null) \
                -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_LIBOBJ  := $(patsubst %.c,$(FUZZ_OUT)/obj/%.o,$(LIB_SRC) $(FMT_SRC))
FUZZ_REPLAYS := $(patsubst %,$(BUILD)/fuzz/replay_%,$(FUZZ_NAMES))

$(FUZZ_OUT)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

# one archive, so a target links only the objects it uses
$(FUZZ_OUT)/libar-fuzz.a: $(FUZZ_LIBOBJ)
	$(AR) rcs $@ $^

$(FUZZ_OUT)/fuzz_%: $(FUZZ_OUT)/obj/tests/fuzz/fuzz_%.o $(FUZZ_OUT)/libar-fuzz.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

fuzz: $(patsubst %,$(FUZZ_OUT)/fuzz_%,$(FUZZ_TARGETS))
	@for n in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_OUT)/corpus/$$n $(FUZZ_OUT)/crashes/$$n; \
	  echo "== fuzz_$$n for $(FUZZ_SECONDS)s"; \
	  $(FUZZ_OUT)/fuzz_$$n -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_OUT)/crashes/$$n/ $(FUZZ_OUT)/corpus/$$n tests/fuzz/corpus/$$n || exit 1; \
	done

$(BUILD)/fuzz/replay_%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/replay_main.o $(BUILD)/libarformats.a $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# keep the objects: replays and fuzzers are rebuilt often, the library rarely
.PRECIOUS: $(BUILD)/tests/fuzz/%.o $(FUZZ_OUT)/obj/%.o

fuzz-replay: $(FUZZ_REPLAYS)
	@fail=0; for n in $(FUZZ_NAMES); do \
	  $(BUILD)/fuzz/replay_$$n tests/fuzz/corpus/$$n tests/fuzz/regressions/$$n || { echo "FAIL fuzz replay $$n"; fail=1; }; \
	done; exit $$fail

test: fuzz-replay

# The layering rule (cmd → formats → libar → kernels) and no include or link
# cycles, on the sources and on the objects just built (tools/check-deps.sh).
check-deps: $(BUILD)/libar.a $(BUILD)/libarformats.a
	@sh tools/check-deps.sh $(BUILD)

test: check-deps

# GPU check (tests/cuda/run.sh): kernel-vs-CPU tests, 7B-block timings and the
# tiny-llama accuracy runs on a machine with a GPU; writes $$OUT/report.txt.
# Never part of `make test`.
CUDA_CHECK := $(BUILD)/cuda/cuda_check
$(CUDA_CHECK): tests/cuda/cuda_check.c $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

cuda-check: $(TOOLS) $(CUDA_CHECK)
	@AR_SHARED=$(SHARED) AR_BIN=$(abspath $(BIN)) AR_CUDA_CHECK=$(abspath $(CUDA_CHECK)) sh tests/cuda/run.sh

# Kernel studies (dev/cuda/README.md): each dev/cuda/NAME.cu is a program of
# its own in llm.c's dev/cuda manner (a CPU reference, numbered versions, a
# benchmark), built into $(BUILD)/dev/cuda/NAME by `make dev-cuda`; never
# linked into the tools, not part of all or test; skipped without nvcc.
.PHONY: dev-cuda
DEV_CU        := $(wildcard dev/cuda/*.cu)
DEV_BIN       := $(patsubst dev/cuda/%.cu,$(BUILD)/dev/cuda/%,$(DEV_CU))
DEV_NVCCFLAGS ?= -O2 -std=c++17 -fmad=false -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
$(BUILD)/dev/cuda/%: dev/cuda/%.cu dev/cuda/common.h
	@mkdir -p $(@D)
	$(NVCC) $(DEV_NVCCFLAGS) -o $@ $<
ifneq ($(strip $(NVCC)),)
dev-cuda: $(DEV_BIN)
else
dev-cuda:
	@echo "dev-cuda: nvcc not found, nothing built"
endif

# Real clients (transformers + auto-round, llama.cpp) load what ar-pack writes;
# needs PyPI on first use (build/venv). Not part of test.
check-clients: $(TOOLS)
	@AR_SHARED=$(SHARED) AR_BIN=$(abspath $(BIN)) sh tests/clients/run.sh

clean:
	rm -rf build/obj build/asan build/fuzz bin

-include $(shell find build -name '*.d' 2>/dev/null)

# ---- auto-round recipes, shared library, install, demo -----------------------
# auto-round's recipes are the same program under other names (it reads argv[0]).
RECIPES := $(addprefix $(BIN)/auto-round-,best light opt-rtn rtn)
all: $(RECIPES)
$(RECIPES): $(BIN)/auto-round
	ln -sf auto-round $@

# libar.so from the same position-independent objects as libar.a.
$(BUILD)/libar.so: $(LIB_OBJ) $(CU_OBJ)
	@mkdir -p $(@D)
	$(CC) -shared $(LDFLAGS) -Wl,-soname,libar.so -o $@ $^ $(LDLIBS)

# make install [PREFIX=/usr/local] [DESTDIR=]: the tools, libar (static and
# shared) with its public headers in include/ar (#include <ar/stream.h>), the
# man pages, and ar.pc.
AR_VERSION ?= 0.1.0
LIBDIR     ?= $(PREFIX)/lib
INCDIR     ?= $(PREFIX)/include
MANDIR     ?= $(PREFIX)/share/man
PUB_HDR    := $(filter-out %_impl.h,$(wildcard libar/*/*.h))

install: all $(BUILD)/libar.a $(BUILD)/libar.so
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)/ar \
	  $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man7
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	for r in $(notdir $(RECIPES)); do ln -sf auto-round $(DESTDIR)$(PREFIX)/bin/$$r; done
	install -m 644 $(BUILD)/libar.a $(DESTDIR)$(LIBDIR)/
	install -m 755 $(BUILD)/libar.so $(DESTDIR)$(LIBDIR)/
	install -m 644 $(PUB_HDR) $(DESTDIR)$(INCDIR)/ar/
	for f in man/*.[157]; do install -m 644 $$f $(DESTDIR)$(MANDIR)/man$${f##*.}/; done
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCDIR)' '' 'Name: ar' \
	  'Description: SignRound quantization of LLMs: tensor streams, models, quantizers' \
	  'Version: $(AR_VERSION)' 'Requires.private: $(PKGS)' 'Cflags: -I$${includedir}' \
	  'Libs: -L$${libdir} -lar$(if $(filter -fsanitize=%,$(LDFLAGS)), $(filter -fsanitize=%,$(LDFLAGS)))' \
	  'Libs.private: $(strip $(LDLIBS))' > $(DESTDIR)$(LIBDIR)/pkgconfig/ar.pc
# (a SANITIZE=1 libar.so needs its clients linked with the sanitizer runtime first)

# make demo: tiny-llama with RTN and SignRound at W4A16 and W2A16G64, a PPL table (slow; not part of test).
demo: all
	@AR_SHARED=$(SHARED) AR_BIN=$(abspath $(BIN)) sh examples/demo.sh
