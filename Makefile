# moxy — build, run, test, bench. `make run` and `make test` work on a fresh
# Debian 12 machine: the first build runs scripts/deps.sh (stamp file).

CC      ?= gcc
BUILD   ?= build
SAN     ?=
CONF    ?= conf/moxy.yaml
DEPS_STAMP := .deps.stamp

LLHTTP_DIR := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp

# Recursive (=) on purpose: pkg-config runs when a recipe needs it, after
# scripts/deps.sh has installed the packages.
PKGS     = libuv yaml-0.1 luajit
WARN     = -Wall -Wextra -Werror
# -O3 with link-time optimisation: 8% fewer instructions per proxied request
# than -O2 (callgrind, docs/performance.md). The link step optimises, so it
# also gets the warnings that need optimisation (maybe-uninitialized, ...).
OPT      = -O3 -flto=auto
LINK_OPT = $(OPT) $(WARN)
ifeq ($(SAN),1)
OPT      = -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LINK_OPT = -fsanitize=address,undefined
endif
CFLAGS   = -std=gnu11 $(OPT) -g $(WARN) -MMD -MP -Isrc -I$(LLHTTP_INC) \
           $(shell pkg-config --cflags $(PKGS))
LDFLAGS  = -rdynamic $(LINK_OPT)
LDLIBS   = $(shell pkg-config --libs $(PKGS)) -lpthread -lm

SRCS       := $(shell find src -name '*.c' | sort)
OBJS       := $(SRCS:%.c=$(BUILD)/%.o)
MAIN_OBJ   := $(BUILD)/src/server/main.o
LIB_OBJS   := $(filter-out $(MAIN_OBJ),$(OBJS))
LLHTTP_OBJS := $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o $(BUILD)/llhttp/llhttp.o
TEST_SRCS  := $(shell find tests/unit -name '*_test.c' 2>/dev/null | sort)
TEST_OBJS  := $(TEST_SRCS:%.c=$(BUILD)/%.o)

.PHONY: all deps run test test-asan unit integration bench bench-lb clean format
all: $(BUILD)/moxy

deps: $(DEPS_STAMP)
$(DEPS_STAMP): scripts/deps.sh
	bash scripts/deps.sh
	touch $@

# Flags live here: objects follow them.
$(OBJS) $(TEST_OBJS) $(LLHTTP_OBJS): Makefile | $(DEPS_STAMP)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# llhttp's generated C comes from Debian's node-llhttp; compiled as is.
$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 $(OPT) -g -w -I$(LLHTTP_INC) -c $< -o $@

$(BUILD)/moxy: $(OBJS) $(LLHTTP_OBJS)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/unit_tests: $(LIB_OBJS) $(LLHTTP_OBJS) $(TEST_OBJS)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lcriterion

unit: $(BUILD)/unit_tests
	$(BUILD)/unit_tests

integration: $(BUILD)/moxy
	MOXY_BIN=$(BUILD)/moxy python3 tests/integration/run.py

# Starts moxy in the foreground with the demo config (and the demo origin).
run: $(BUILD)/moxy
	bash scripts/run-demo.sh $(BUILD)/moxy $(CONF)

# Every suite, then every suite again under ASan+UBSan; last line "N passed, N failed".
test: $(DEPS_STAMP)
	bash scripts/test.sh

test-asan: $(DEPS_STAMP)
	bash scripts/test.sh --asan-only

bench: $(BUILD)/moxy $(BUILD)/lb_bench
	bash scripts/bench.sh $(BUILD)/moxy

# select() cost per load-balancing algorithm (tests/bench/lb_bench.c); bench.sh runs it too.
$(BUILD)/lb_bench: tests/bench/lb_bench.c $(LIB_OBJS) $(LLHTTP_OBJS)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(LDLIBS)

bench-lb: $(BUILD)/lb_bench
	$(BUILD)/lb_bench

format:
	clang-format -i $(SRCS) $(TEST_SRCS)

clean:
	rm -rf build build-asan

-include $(OBJS:.o=.d) $(TEST_OBJS:.o=.d)
