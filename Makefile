# Spur's commands. The two a newcomer needs: `make demo` and `make test`.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test demo crds fmt lint deps-test deps-demo clean bench-ipam bench-alloc bench-cni bench-sim sim-seeds sim-soak validate-deploy

all: build

build:
	$(CARGO) build --workspace --all-targets

## test: install what is missing, then formatting, lints and every test
## (each testbed on the harness and in the simulator, compared; the
## simulator's determinism and its pinned seeds), the deploy manifests,
## and every testbed in the simulator for 200 seeds with the default
## faults (`make sim-seeds`).
test: deps-test
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) test --workspace --locked
	python3 scripts/validate-deploy.py
	$(MAKE) sim-seeds

## sim-seeds: every testbed under testbeds/ in the simulator (release build),
## SIM_SEEDS seeds with SIM_FAULTS faults (default 1..201, default).
SIM_SEEDS ?= 1..201
SIM_FAULTS ?= default
sim-seeds:
	$(CARGO) build -q --release --locked -p spur-sim
	scripts/sim-seeds.sh $(SIM_SEEDS) $(SIM_FAULTS)

## sim-soak: the same for 10,000 seeds (about 2.5 hours on two cores).
sim-soak:
	$(MAKE) sim-seeds SIM_SEEDS=1..10001

## bench-sim: the simulator's cluster mode, 1,000 nodes x 30 Pods by
## default (BENCH_SIM_ARGS: --nodes N --pods-per-node P --seed S); ends with
## the line `sim-bench nodes=N pods=P wall_s=W allocs_per_s=A api_requests_per_alloc=Q`.
bench-sim:
	$(CARGO) build -q --release --locked -p spur-sim
	target/release/spur-sim bench $(BENCH_SIM_ARGS)

## demo: runs the seed-example testbed on real Open vSwitch in network
## namespaces (root; installs what is missing) and prints the report.
## DEMO_ARGS: more spur-hil options, e.g. --keep to look around with kubectl.
demo: deps-demo
	@if [ "$$(id -u)" -ne 0 ]; then \
	  echo "make demo builds network namespaces, veths and Open vSwitch bridges: it needs root."; \
	  echo "Run it as root, e.g.: sudo make demo"; exit 1; fi
	$(CARGO) build -q --locked -p spur-hil -p spur-node -p spur-cni -p spur-controller --bins
	target/debug/spur-hil run testbeds/seed-example $(DEMO_ARGS)

## validate-deploy: what `kubectl kustomize deploy/` builds and deploy/examples/,
## with kubernetes-validate (strict) for Kubernetes 1.30-1.33, and the objects
## of Spur's CRDs against their openAPIV3Schema.
validate-deploy: deps-test
	python3 scripts/validate-deploy.py

## crds: regenerate deploy/crds/ from the Rust types.
crds:
	$(CARGO) run -q --locked -p spur-core --example gen-crds -- deploy/crds

## bench-ipam: API cost of IP allocation, sharded IPAMBlocks against one
## object holding every allocation (BENCH_IPAM_ARGS: --nodes N --allocs M --seed S).
bench-ipam:
	$(CARGO) run --release --locked -p spur-node --example ipam-bench -- $(BENCH_IPAM_ARGS)

## bench-cni: ADD/DEL latency of one VLAN interface through the real spur
## binary against Debian's macvlan + host-local, and spur as IPAM under
## macvlan against host-local (root; BENCH_CNI_ARGS: --cycles N).
bench-cni: deps-demo
	$(CARGO) build -q --release --locked -p spur-hil -p spur-node -p spur-cni -p spur-controller --bins
	target/release/spur-hil bench-cni $(BENCH_CNI_ARGS)

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
