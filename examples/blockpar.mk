# Block-parallel tuning with make (docs/parallel.md). With --disable_quanted_input
# each block is tuned on the FP model's inputs, so block ranges are independent
# jobs: `make -j` tunes them side by side and ar-pack merges their streams into
# the model one whole `ar-tune --disable_quanted_input` run makes, byte for byte.
#
#   make -f examples/blockpar.mk -j3 RANGES="0-1 2-3 4-5" [ITERS=200] [OUT=out/blockpar] ...
#
#   OUT/calib-A.ars      ar-calib --upto-block A: the FP inputs of block A
#                        (block 0's: the embeddings, plain ar-calib)
#   OUT/blocks-A-B.ars   ar-tune --blocks A-B --disable_quanted_input
#   OUT/model/           ar-pack -i OUT/blocks-A-B.ars ...: the merged model
#   OUT/whole/           `make whole`: one whole run, for comparison
#                        (`diff -r OUT/model OUT/whole` finds no difference)
#
# Every range's FP inputs and tuning use the same THREADS and BATCH: ar-tune
# refuses inputs computed otherwise, and ar-pack refuses ranges whose settings
# differ. RANGES must tile the model's blocks (ar-pack names a gap or overlap).
AR_BIN    ?= $(abspath $(dir $(lastword $(MAKEFILE_LIST)))../bin)
AR_SHARED ?= $(abspath $(dir $(lastword $(MAKEFILE_LIST)))../../shared)
MODEL     ?= $(AR_SHARED)/models/tiny-llama
DATA      ?= $(MODEL)/heldout.txt
RANGES    ?= 0-2 3-5
SCHEME    ?= W4A16
ITERS     ?= 200
NSAMPLES  ?= 128
SEQLEN    ?= 2048
BATCH     ?= 8
SEED      ?= 42
THREADS   ?= 1
FORMAT    ?= auto_round
OUT       ?= out/blockpar

CALIB_FLAGS = --model $(MODEL) --dataset $(DATA) --nsamples $(NSAMPLES) --seqlen $(SEQLEN) --seed $(SEED) --quiet
# the forwards that make a block's FP inputs, as the tuning run's own
FP_FLAGS    = --batch_size $(BATCH) --threads $(THREADS)
TUNE_FLAGS  = --scheme $(SCHEME) --iters $(ITERS) --seed $(SEED) --disable_quanted_input $(FP_FLAGS) --quiet
first       = $(firstword $(subst -, ,$(1)))
STREAMS     = $(foreach r,$(RANGES),$(OUT)/blocks-$(r).ars)

.PHONY: all whole clean
.DELETE_ON_ERROR:
.SECONDEXPANSION:

all: $(OUT)/model/config.json

$(OUT)/calib-0.ars:
	@mkdir -p $(@D)
	$(AR_BIN)/ar-calib $(CALIB_FLAGS) -o $@

$(OUT)/calib-%.ars:
	@mkdir -p $(@D)
	$(AR_BIN)/ar-calib $(CALIB_FLAGS) --upto-block $* $(FP_FLAGS) -o $@

$(OUT)/blocks-%.ars: $(OUT)/calib-$$(call first,$$*).ars
	$(AR_BIN)/ar-tune -i $< --blocks $* $(TUNE_FLAGS) -o $@

# The folder's config.json stands for the folder (ar-pack renames it into place when complete).
$(OUT)/model/config.json: $(STREAMS)
	rm -rf $(OUT)/model
	$(AR_BIN)/ar-pack $(addprefix -i ,$^) --format $(FORMAT) -o $(OUT)/model --quiet

whole: $(OUT)/calib-0.ars
	$(AR_BIN)/ar-tune -i $< $(TUNE_FLAGS) -o $(OUT)/whole.ars
	rm -rf $(OUT)/whole
	$(AR_BIN)/ar-pack -i $(OUT)/whole.ars --format $(FORMAT) -o $(OUT)/whole --quiet

.PRECIOUS: $(OUT)/calib-%.ars $(OUT)/blocks-%.ars

clean:
	rm -rf $(OUT)
