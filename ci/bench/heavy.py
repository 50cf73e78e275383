#!/usr/bin/env python3
"""A heavy filter, shaped like a WAF (the test filter `filter-heavy`: a large module, a slow
start-up that compiles its rule sets, every rule run over each request's query and whole
body) in nginx + inwasm, Envoy + inwasm and Envoy + its own Wasm filter (V8), each request
a POST of a benign 16 KB form passed to an upstream (a bare nginx answering it: a direct
answer would go before the body and its inspection, in Envoy).

As `http.py`: the servers on CPU 0 (one worker), wrk and the upstream on CPU 1, interleaved
rounds, medians. Prints a markdown table; `--json FILE` also writes the numbers.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from load import against, interleaved  # noqa: E402
from servers import FILTERS, free_port, inwasm_filter, start_envoys, start_nginx  # noqa: E402

FILTER = os.path.join(FILTERS, "filter_heavy.wasm")
# Roomy budgets: rule sets take time to compile, bodies to inspect (as a WAF's do).
NGINX_LIMITS = "proxy_wasm_timeout 5s; proxy_wasm_request_timeout 10s; client_max_body_size 1m;"
POST = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "user=alice&comment=" .. string.rep("the+quick+brown+fox+jumps+over+the+lazy+dog+", 370)
"""


def upstream_server(work):
    """A bare nginx on CPU 1 answering every request (its body read and dropped)."""
    port = free_port()
    http = f"""    client_body_buffer_size 64k;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello\\n"; }} }}"""
    _, stop = start_nginx(work, "upstream", 1, http, wait=[port])
    return port, stop


def nginx_server(work, upstream):
    port = free_port()
    http = f"""    client_body_buffer_size 64k;
    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            {NGINX_LIMITS} proxy_wasm heavy;
            proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://backend;
        }}
    }}"""
    worker, stop = start_nginx(work, "nginx", 0, http, wasm=f"module heavy {FILTER};", wait=[port], wait_limit=120)
    return (port, worker), stop


V8_FILTER = f"""          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: heavy
                vm_config: {{vm_id: heavy, runtime: envoy.wasm.runtime.v8, code: {{local: {{filename: {FILTER}}}}}}}"""

INWASM_FILTER = inwasm_filter(f"{{module: {FILTER}, timeout: 5s, request_timeout: 10s}}")


def envoy_servers(work, upstream):
    variants = {"Envoy + heavy filter (V8)": [V8_FILTER], "Envoy + heavy filter (inwasm)": [INWASM_FILTER]}
    return start_envoys(work, variants, "", "heavy", upstream=upstream, wait_limit=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="inwasm-heavy-")
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write(POST)
    upstream, stop_upstream = upstream_server(work)
    nginx, stop_nginx = nginx_server(work, upstream)
    envoy, stop_envoy = envoy_servers(work, upstream)
    servers = {"nginx + heavy filter (inwasm)": nginx, **envoy}
    try:
        # The warm-up fills instances, rule caches and connections.
        rounds = interleaved(servers, args.rounds, args.seconds, 2, script)
    finally:
        stop_nginx()
        stop_envoy()
        stop_upstream()
    rows = against(rounds, "Envoy + heavy filter (V8)", "vs_v8")
    print(f"{args.rounds} interleaved rounds of {args.seconds} s, medians; one server worker on CPU 0, wrk (1 thread, "
          "32 connections) and the upstream on CPU 1; each request a POST of a 16 KB form that every rule "
          "inspects.\n")
    print("| server | requests/s | vs Envoy + V8 | server CPU per request | p50 | p99 |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['rps']:,.0f} | {row['vs_v8']:.1%} | {row['cpu_us']:.0f} us "
              f"| {row['p50_us'] / 1e3:.1f} ms | {row['p99_us'] / 1e3:.1f} ms |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
