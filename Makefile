# moxy — build, run, test, bench. `make run` and `make test` work on a fresh
# Debian 12 machine: the first build runs scripts/deps.sh (stamp file).

CC      ?= gcc
BUILD   ?= build
SAN     ?=
CONF    ?= conf/moxy.yaml
DEPS_STAMP := .deps.stamp

LLHTTP_DIR := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp
# llhttp's strict build: a CR must be followed by LF everywhere (the loose one
# takes CR + any byte as the end of a head, a status line, a chunk-size line or
# the trailers: CVE-2023-30589), CRLF after chunk data, nothing after a message
# with "Connection: close", and no TAB, FF or bytes >= 0x80 in a request target
# (moxy refused those already). Every object sees the same definition.
LLHTTP_DEFS := -I$(LLHTTP_INC) -DLLHTTP_STRICT_MODE=1

# Recursive (=) on purpose: pkg-config runs when a recipe needs it, after
# scripts/deps.sh has installed the packages.
PKGS     = libuv yaml-0.1 luajit liburing
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
CFLAGS   = -std=gnu11 $(OPT) -g $(WARN) -MMD -MP -Isrc $(LLHTTP_DEFS) \
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

.PHONY: all deps run test test-asan unit integration bench bench-lb clean format fuzz fuzz-regress
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
	$(CC) -std=gnu11 $(OPT) -g -w $(LLHTTP_DEFS) -c $< -o $@

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

# libFuzzer targets (tests/fuzz/<name>_fuzz.c), built with clang, ASan and
# UBSan into build-fuzz/. The code under test is instrumented for coverage
# (-fsanitize=fuzzer-no-link), llhttp included: its states are what the
# fuzzer explores. A target links the few moxy objects it needs from an
# archive; codecs (h1_server.c, upconn.c) are compiled into their target.
FUZZ_CC      ?= clang
FUZZ_BUILD   := build-fuzz
FUZZ_SECONDS ?= 30
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS   = -std=gnu11 -O1 -g -fno-omit-frame-pointer $(FUZZ_SAN) $(WARN) -MMD -MP \
                -Isrc $(LLHTTP_DEFS) $(shell pkg-config --cflags $(PKGS))
FUZZ_NAMES   := $(sort $(patsubst tests/fuzz/%_fuzz.c,%,$(wildcard tests/fuzz/*_fuzz.c)))
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/%_fuzz)
FUZZ_LIB_SRCS := src/core/alloc.c src/core/arena.c src/core/buf.c src/core/errors.c \
                 src/core/log.c src/core/stats.c src/core/timeq.c src/http/headers.c \
                 src/http/status.c src/http/uri.c src/net/addr.c src/net/ring.c src/conf/conf.c
FUZZ_LIB_OBJS := $(FUZZ_LIB_SRCS:%.c=$(FUZZ_BUILD)/%.o) \
                 $(LLHTTP_OBJS:$(BUILD)/%=$(FUZZ_BUILD)/%)

$(FUZZ_LIB_OBJS) $(FUZZ_BINS): Makefile | $(DEPS_STAMP)

$(FUZZ_BUILD)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu11 -O1 -g -w $(FUZZ_SAN) -fsanitize=fuzzer-no-link $(LLHTTP_DEFS) \
		-c $< -o $@

$(FUZZ_BUILD)/libmoxyfuzz.a: $(FUZZ_LIB_OBJS)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/%_fuzz: tests/fuzz/%_fuzz.c $(FUZZ_BUILD)/libmoxyfuzz.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_BUILD)/libmoxyfuzz.a -o $@ \
		$(shell pkg-config --libs libuv yaml-0.1 liburing) -lpthread -lm

# Each target for FUZZ_SECONDS from its seeds (new inputs go to
# build-fuzz/corpus/<name>, not to the committed corpus); exits non-zero on a
# crash, with the input in build-fuzz/artifacts/.
fuzz: $(FUZZ_BINS)
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh fuzz $(FUZZ_NAMES)

# Each target once over its committed corpus (tests/fuzz/corpus/<name>):
# seconds, deterministic, one line per target.
fuzz-regress: $(FUZZ_BINS)
	bash tests/fuzz/run.sh regress $(FUZZ_NAMES)

format:
	clang-format -i $(SRCS) $(TEST_SRCS) $(wildcard tests/fuzz/*.c tests/fuzz/*.h)

clean:
	rm -rf build build-asan $(FUZZ_BUILD)

-include $(OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(FUZZ_LIB_OBJS:.o=.d) $(FUZZ_BINS:=.d)
