SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -euc
MAKEFLAGS += --warn-undefined-variables --no-print-directory
.DEFAULT_GOAL := help

GO        ?= go
FUZZTIME  ?= 10s
BENCHTIME ?= 1s
PKGS      := ./...

.PHONY: build run test bench fuzz lint tidy clean help

build: ## build bin/cohort-node
	$(GO) build -o bin/cohort-node ./cmd/node

run: build ## start a 3-node cluster on 127.0.0.1:8081-8083; Ctrl-C stops all three
	examples/local/run.sh bin/cohort-node

test: ## go vet, then every test with the race detector (unit, cluster, fuzz seeds, e2e), never cached: e2e builds the node itself
	@if [ "$$($(GO) env CGO_ENABLED)" != 1 ] || ! command -v "$$($(GO) env CC)" >/dev/null; then \
		echo '*** make test: -race needs cgo and a C compiler (gcc); install gcc and set CGO_ENABLED=1' >&2; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

bench: ## side-by-side benchmarks; results go in docs/benchmarks.md. The HTTP ones run twice: Go client, then wrk
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m $(PKGS)
	@if command -v wrk >/dev/null; then \
		COHORT_LOADGEN=wrk $(GO) test -run '^$$' -bench 'Middleware|Compare' -benchtime $(BENCHTIME) -timeout 30m ./web/ ./internal/compare/; \
	else echo '*** make bench: wrk not installed (Debian package wrk): the wrk rounds of the HTTP benchmarks are left out' >&2; fi

fuzz: ## run each fuzz target for FUZZTIME (default 10s; FUZZTIME=1m make fuzz)
	@for pkg in $$($(GO) list $(PKGS)); do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$target"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

tidy: ## fail if go.mod or go.sum are not tidy
	$(GO) mod tidy -diff

clean: ## remove build output and test caches
	rm -rf bin
	$(GO) clean -testcache

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n",$$1,$$2}'
