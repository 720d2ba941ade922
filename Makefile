# Spur's commands. The two a newcomer needs: `make demo` and `make test`.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test demo crds fmt lint deps-test deps-demo clean bench-ipam bench-alloc

all: build

build:
	$(CARGO) build --workspace --all-targets

## test: install what is missing, then formatting, lints and every test.
test: deps-test
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) test --workspace --locked

## demo: the main job on this machine (see README for what it shows today).
demo: deps-demo
	$(CARGO) run -q --locked -p spur-testbed --bin spur-testbed -- check testbeds/seed-example

## crds: regenerate deploy/crds/ from the Rust types.
crds:
	$(CARGO) run -q --locked -p spur-core --example gen-crds -- deploy/crds

## bench-ipam: API cost of IP allocation, sharded IPAMBlocks against one
## object holding every allocation (BENCH_IPAM_ARGS: --nodes N --allocs M --seed S).
bench-ipam:
	$(CARGO) run --release --locked -p spur-node --example ipam-bench -- $(BENCH_IPAM_ARGS)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench-alloc: allocate+release in 90%-full /24, /16, /8 and /64 pools (about 2 minutes; 16 GiB of memory at peak).
bench-alloc:
	$(CARGO) bench -p spur-core --bench allocator -- --warm-up-time 1 --measurement-time 3

deps-test:
	@scripts/deps.sh test

deps-demo:
	@scripts/deps.sh demo

clean:
	$(CARGO) clean
