# match_node: set-up, demo, tests. Every target runs the (idempotent) set-up first.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
ENV := source scripts/env.sh

.PHONY: setup demo test bench clean

setup:
	scripts/setup.sh

# Replays a real-image sequence through the real node with real weights; prints what was
# published and writes out/demo/demo_matches.png and out/demo/demo_tracks.png.
demo: setup
	$(ENV) && python -m match_node.ros.demo --frames 12 --output out/demo

# All tests (core, reference equivalence, real rclpy node). Minutes on 2 CPU cores.
# pytest-timeout ends a stuck test; the outer limit ends a run stuck in native code that holds
# the GIL (where pytest-timeout's signal cannot run), so CI fails instead of hanging.
test: setup
	$(ENV) && cd match_node && timeout --kill-after 60 3600 python -m pytest -q --timeout 900 test \
	  || { rc=$$?; [ $$rc -ge 124 ] && echo "tests: stopped after 3600 s (exit $$rc)"; exit $$rc; }

# CPU per-frame cost of every pipeline beside the official code and OpenCV (bench/results/cpu.md),
# the CPU preset in the running node at 10 Hz (bench/results/node_rate.md), then the
# latency-budget benchmarks (minutes on a CPU; the second on streams that turn textureless):
# results, plots and per-frame data to bench/results.
bench: setup
	$(ENV) && python -m bench.cpu
	$(ENV) && python -m bench.node_rate
	$(ENV) && python -m bench.budget --frames 40
	$(ENV) && python -m bench.budget --frames 30 --set detection_threshold=0 --set max_keypoints=1024 --tag _top1024
	$(ENV) && python -m bench.textureless_budget

clean:
	rm -rf build install log out .venv
