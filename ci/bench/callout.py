#!/usr/bin/env python3
"""An http call per request against nginx's own proxying: nginx + the callout filter (each
request makes one http call to an upstream block with keepalive connections and answers with
what came back) and nginx with `proxy_pass` to the same upstream block, in interleaved rounds.

As `http.py`: the servers on CPU 0 (one worker), wrk and the upstream (a bare nginx) on
CPU 1; the ratio of the two is computed within each round and its median reported. Prints a
markdown table; `--json FILE` also writes the numbers.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from heavy import upstream_server  # noqa: E402
from load import against, interleaved  # noqa: E402
from servers import FILTERS, free_port, start_nginx  # noqa: E402

FILTER = os.path.join(FILTERS, "filter_callout.wasm")
PROXY = "nginx proxy_pass"
CALLOUT = "nginx + callout filter"


def nginx_servers(work, upstream):
    variants = {PROXY: 'proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://backend;',
                CALLOUT: "proxy_wasm callout 'upstream backend';"}
    ports = {name: free_port() for name in variants}
    servers = "\n".join(f"    server {{ listen 127.0.0.1:{ports[n]}; location / {{ {v} }} }}" for n, v in variants.items())
    http = f"    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 32; }}\n{servers}"
    worker, stop = start_nginx(work, "nginx", 0, http, wasm=f"module callout {FILTER};", wait=ports.values())
    return {name: (port, worker) for name, port in ports.items()}, stop


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="inwasm-callout-")
    upstream, stop_upstream = upstream_server(work)
    servers, stop_nginx = nginx_servers(work, upstream)
    try:
        # The warm-up fills instances and kept connections.
        rounds = interleaved(servers, args.rounds, args.seconds, 1)
    finally:
        stop_nginx()
        stop_upstream()
    rows = against(rounds, PROXY, "vs_proxy_pass")
    print(f"{args.rounds} interleaved rounds of {args.seconds} s, medians; one server worker on CPU 0, wrk (1 thread, "
          "32 connections) and the upstream (a bare nginx answering 6 bytes) on CPU 1; both go to one upstream "
          "block with `keepalive 32`.\n")
    print("| server | requests/s | vs proxy_pass | server CPU per request | p50 | p99 |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['rps']:,.0f} | {row['vs_proxy_pass']:.1%} | {row['cpu_us']:.1f} us "
              f"| {row['p50_us']:.0f} us | {row['p99_us']:.0f} us |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
