# shardmap: `make demo` runs the stack locally, `make test` runs every test.
GO      ?= go
BIN     := bin
PKGS    := ./...

.PHONY: build test unit e2e e2e-3.0 bench bench-3.0 fuzz soak lint demo deps deb clean

build:
	$(GO) build -o $(BIN)/ ./cmd/...

## deb: the Debian package $(BIN)/shardmap_<version>_<arch>.deb, with dpkg-deb from deploy/ (the
## systemd unit, /etc/default/shardmap-syncer, maintainer scripts) and static binaries.
deb:
	@bash scripts/deb.sh $(BIN)

## deps: install haproxy and redis-server from Debian's packages when missing.
deps:
	@bash scripts/deps.sh

## test: unit and e2e tests, with the race detector, on Debian 12's HAProxy 2.6 (installs haproxy,
## redis-server, chromium if missing), then the e2e suite again on Debian 13's HAProxy 3.0.
test:
	@bash scripts/deps.sh --browser
	$(GO) vet $(PKGS)
	@haproxy -v | sed -n 1p
	@# The 3.0 run happens even when the first fails, so one run shows both.
	@rc=0; $(GO) test -race -count=1 -timeout 20m $(PKGS) || rc=$$?; \
	  ( $(E2E30) ) || rc=1; exit $$rc

## e2e-3.0: the e2e suite and the tests that start a real haproxy, on Debian 13's HAProxy 3.0
## (scripts/haproxy-3.0.sh fetches it into ~/.cache/shardmap without touching the system's packages).
HAPROXY30_PKGS := ./e2e/ ./runtime/ ./haproxy/
E2E30 = h="$$(bash scripts/haproxy-3.0.sh)" && "$$h" -v | sed -n 1p && \
	  echo "SHARDMAP_HAPROXY=$$h $(GO) test -race -count=1 -timeout 20m $(HAPROXY30_PKGS)" && \
	  SHARDMAP_HAPROXY="$$h" $(GO) test -race -count=1 -timeout 20m $(HAPROXY30_PKGS)
e2e-3.0:
	@bash scripts/deps.sh --browser
	@$(E2E30)

unit:
	$(GO) test -race -count=1 ./maps/ ./runtime/ ./syncer/ ./haproxy/

e2e:
	@bash scripts/deps.sh --browser
	$(GO) test -race -count=1 -timeout 20m -v ./e2e/

## bench: the Go benchmarks of the runtime API and the store, then shardmap-bench's scenarios on
## real HAProxy, Redis and the syncer (request path, propagation, churn, bulk, memory), which write
## docs/BENCHMARKS.md and its charts. About 10 minutes on 2 cores. BENCH_FLAGS=-quick for a smoke
## test (its doc goes to a temp dir), BENCH_FLAGS='-only request' for a subset.
BENCH_FLAGS ?=
bench: deps build
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench . -benchtime 1s -count 1 -timeout 30m ./bench/ ./maps/ > $(BIN)/bench-go.txt; \
	  rc=$$?; cat $(BIN)/bench-go.txt; exit $$rc
	@# The program pins HAProxy to CPU 0; it, Redis and the syncer run on CPU 1.
	taskset -c 1 $(BIN)/shardmap-bench -gotest $(BIN)/bench-go.txt -readme README.md $(BENCH_FLAGS)

## bench-3.0: shardmap-bench's scenarios on Debian 13's HAProxy 3.0 (fetched by scripts/haproxy-3.0.sh,
## the system's packages untouched), where set/del use a tree and the syncer writes the single map:
## writes docs/BENCHMARKS-3.0.md. About 6 minutes on 2 cores.
bench-3.0: deps build
	h="$$(bash scripts/haproxy-3.0.sh)" && SHARDMAP_HAPROXY="$$h" taskset -c 1 $(BIN)/shardmap-bench -make bench-3.0 -o docs/BENCHMARKS-3.0.md $(BENCH_FLAGS)

## soak: load + churn + random kill -9 of haproxy, syncer, redis; bounded by SOAK_DURATION (default 2m).
SOAK_DURATION ?= 2m
soak:
	@bash scripts/deps.sh
	SOAK_DURATION=$(SOAK_DURATION) $(GO) test -tags soak -count=1 -timeout 30m -run TestSoak -v ./e2e/ 2>&1 | grep -v '^        '

## fuzz: each fuzz target for a bounded time.
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./maps/ -run '^$$' -fuzz FuzzParseMapFile -fuzztime $(FUZZTIME)
	$(GO) test ./maps/ -run '^$$' -fuzz FuzzValidateUser -fuzztime $(FUZZTIME)
	$(GO) test ./runtime/ -run '^$$' -fuzz FuzzReadPromptReply -fuzztime $(FUZZTIME)
	$(GO) test ./runtime/ -run '^$$' -fuzz FuzzValidUsersAreSafeWords -fuzztime $(FUZZTIME)

lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt would change:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)

## demo: Redis, HAProxy with a generated config, demo backends and the syncer on loopback.
## ROUTING=ids runs it in routing: ids (users get real IDs; docs/IDS.md).
ROUTING ?= users
demo: deps build
	@ROUTING=$(ROUTING) bash scripts/demo.sh

clean:
	rm -rf $(BIN)
