#!/usr/bin/env bash
# `make bench`: runs every benchmark in one go and writes docs/benchmarks/README.md (the
# tables) and its charts. Takes 15 to 25 minutes; run it on a machine doing nothing else.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 ci/bench/report.py --check
work=$(mktemp -d)
trap 'echo "bench: failed; the tables so far are in $work" >&2' ERR
echo "bench: host micro-benchmarks"
cargo bench --quiet --locked -p inwasm-host --bench host | grep -E '^(\||Best)' >"$work/micro.md"
echo "bench: HTTP throughput and latency"
python3 ci/bench/http.py --json "$work/http.json" >"$work/http.md"
echo "bench: a heavy filter"
python3 ci/bench/heavy.py --json "$work/heavy.json" >"$work/heavy.md"
echo "bench: an http call per request"
python3 ci/bench/callout.py --json "$work/callout.json" >"$work/callout.md"
echo "bench: start-up and density"
python3 ci/bench/density.py --json "$work/density.json" >"$work/density.md"
echo "bench: start-up and density, SDK-built modules (the cold start of 10,000 takes about 25 min on 2 cores)"
python3 ci/bench/density.py --counts 1,100,1000,10000 --workers 4 --filter build/filters/filter_one_header.wasm \
  --json "$work/density_real.json" >"$work/density_real.md"
echo "bench: deadline precision"
python3 ci/bench/deadline.py --json "$work/deadline.json" >"$work/deadline.md"
python3 ci/bench/report.py "$work"
rm -rf "$work"
echo "bench: wrote docs/benchmarks/README.md"
