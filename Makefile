# ar — SignRound quantization as small Unix tools.
# make deps   install the Debian packages we build against (idempotent; needs root or sudo)
# make        build every tool into bin/
# make test   unit tests (Criterion) and end-to-end shell tests
# make bench  benchmarks (never part of test)

CC      ?= cc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
PKGS    := libzstd libcjson libpcre2-8 libutf8proc openblas
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fPIC -pthread -fopenmp -Ilibar -Iformats \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -pthread -fopenmp
SHARED  ?= $(abspath ../shared)
PREFIX  ?= /usr/local

ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer
LDFLAGS += -fsanitize=address,undefined
BUILD   ?= build/asan
else
BUILD   ?= build/obj
endif

LIB_SRC  := $(wildcard libar/*.c)
FMT_SRC  := $(wildcard formats/*.c)
CLI_SRC  := $(filter-out cmd/ar-% cmd/auto-round%,$(wildcard cmd/*.c))
TOOL_SRC := $(wildcard cmd/ar-*.c cmd/auto-round*.c)
TOOLS    := $(patsubst cmd/%.c,bin/%,$(TOOL_SRC))
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
LDLIBS   += -L$(CUDA_DIR)/lib64 -lcudart -lcublas -lcublasLt -lstdc++
endif
endif
NVCCFLAGS ?= -O2 -std=c++17 -Xcompiler -fPIC -Ilibar -Ikernels \
             -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90

.PHONY: all deps test unit e2e bench clean install check-clients demo
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

$(BUILD)/kernels/%.o: kernels/%.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

bin/%: $(BUILD)/cmd/%.o $(CLI_OBJ) $(BUILD)/libarformats.a $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TESTLIB_OBJ) $(BUILD)/libarformats.a $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcriterion

test: unit e2e

# Each unit binary runs on its own so one failure names its area.
unit: $(UNITS)
	@fail=0; for t in $(UNITS); do echo "== $$t"; AR_SHARED=$(SHARED) $$t --jobs 2 || fail=1; done; exit $$fail

e2e: $(TOOLS)
	@AR_SHARED=$(SHARED) AR_BIN=$(abspath bin) sh tests/e2e/run.sh

# Benchmark helpers: each tests/bench/NAME.c becomes $(BUILD)/bench/NAME.
BENCH_BIN := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(wildcard tests/bench/*.c))
$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libar.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bench: $(TOOLS) $(BENCH_BIN)
	@AR_SHARED=$(SHARED) AR_BIN=$(abspath bin) AR_BENCH_BIN=$(abspath $(BUILD)/bench) sh tests/bench/run.sh

clean:
	rm -rf build/obj build/asan bin

-include $(shell find build -name '*.d' 2>/dev/null)
