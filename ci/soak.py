#!/usr/bin/env python3
"""`make soak`: nginx with 2 workers under wrk, normal requests mixed with spinning, memory-hogging,
panicking and recursing ones, in two phases of equal length:

1. steady: the same workers all along. No worker may exit, and their RSS and open files must
   be the same after the run as after the warm-up.
2. reloads: `nginx -s reload` every second, alternating two configurations (the good filter's
   response header changes), with every tenth reload a broken module that must be refused
   while the old configuration keeps serving. The master's RSS and open files must stay flat.

In both phases every normal request must succeed (no non-2xx answer, no socket error), every
misbehaving one must get its 503, and the error log must show no crash. During reloads the
normal requests each use their own connection (`Connection: close`): a worker that shuts
down closes its idle keep-alive connections, which races with a client sending its next
request on one, and wrk counts that as an error even against bare nginx; HTTP clients retry
such a request on a new connection. The good tenant (the
header example) and the misbehaving one (the limits example) are separate modules, so the
second's failures must never reach the first's requests.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from servers import FILTERS, NGINX, NGINX_MODULE, children, free_port, rss_kib

# The misbehaving requests: the limits example fails on these path endings.
BAD_PATHS = ["/bad/loop", "/bad/hog", "/bad/panic", "/bad/recurse",
             "/isolated/loop", "/isolated/hog", "/isolated/panic"]
# Counts the misbehaving requests' statuses; done() prints them as `status count` lines.
BAD_SCRIPT = """
local paths = {%s}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) n = 0; statuses = {} end
function request() n = n + 1; return wrk.format("GET", paths[n %% #paths + 1]) end
function response(status) statuses[status] = (statuses[status] or 0) + 1 end
function done()
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do print("status " .. status .. " " .. count) end
  end
end
""" % ", ".join(f'"{p}"' for p in BAD_PATHS)

# The allowed growth of RSS (KiB) between the two measurements of a phase.
RSS_SLACK_KIB = 8 * 1024


def write_config(work, port, upstream, variant, broken=False):
    """The configuration `variant` ("a" or "b") sets x-soak to; `broken` adds an invalid module."""
    broken_module = f"module broken {work}/broken.wasm;" if broken else ""
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(f"""load_module {NGINX_MODULE};
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
wasm {{
    module good {FILTERS}/example_headers.wasm;
    module limits {FILTERS}/example_limits.wasm;
    module_memory_limit limits 16m;
    {broken_module}
}}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{upstream};
        keepalive_timeout 1s;  # the proxy's idle connections are gone soon after the load
        location / {{ return 200 "upstream served $request_uri\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_wasm_timeout 20ms;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /good/ {{
            proxy_wasm good 'response set x-soak {variant}';
            proxy_pass http://backend;
        }}
        location /bad/ {{
            proxy_wasm limits;
            proxy_pass http://backend;
        }}
        location /isolated/ {{
            proxy_wasm limits;
            proxy_wasm_isolation stream;
            proxy_pass http://backend;
        }}
    }}
}}
""")


def nginx(work, *args):
    return subprocess.run([NGINX, "-p", work, "-c", os.path.join(work, "nginx.conf"), *args],
                          capture_output=True, text=True)


def master_pid(work):
    with open(os.path.join(work, "nginx.pid")) as f:
        return int(f.read())


# The soak's modules: a worker keeps one memory image open for each it has instantiated.
MODULES = ("good", "limits")


def open_files(pid):
    """What `pid` has open: (memory images, everything else). A worker opens a module's
    memory image at its first instance of it, which the warm-up may not have reached."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            pass
    images = sum("wasm-memory-image" in target for target in targets)
    return images, len(targets) - images


def snapshot(master):
    time.sleep(2)  # connections of the load just ended close
    pids = children(master)
    return {"master_rss": rss_kib(master), "master_fds": open_files(master), "workers": pids,
            "worker_rss": {p: rss_kib(p) for p in pids}, "worker_fds": {p: open_files(p) for p in pids}}


class Wrk:
    """One wrk run in the background; `result()` waits and parses its summary."""

    def __init__(self, url, seconds, connections, script=None, close=False):
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", url]
        if script:
            cmd[1:1] = ["-s", script]
        if close:
            cmd[1:1] = ["-H", "Connection: close"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self):
        out, _ = self.proc.communicate()
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        statuses = {int(s): int(c) for s, c in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
        return {"requests": requests, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
                "socket_errors": sum(int(e) for e in errors.groups()) if errors else 0,
                "statuses": statuses, "output": out}


def traffic(port, seconds, work, close=False):
    """Normal and misbehaving wrk runs side by side for `seconds`; returns their results.
    `close`: a connection per normal request."""
    script = os.path.join(work, "bad.lua")
    with open(script, "w") as f:
        f.write(BAD_SCRIPT)
    runs = {
        "normal (good tenant)": Wrk(f"http://127.0.0.1:{port}/good/ok", seconds, 16, close=close),
        "normal (isolated, beside failing requests)":
            Wrk(f"http://127.0.0.1:{port}/isolated/ok", seconds, 8, close=close),
        "misbehaving": Wrk(f"http://127.0.0.1:{port}/", seconds, 4, script),
    }
    return {name: run.result() for name, run in runs.items()}


def check_traffic(results, failures):
    for name, r in results.items():
        if name.startswith("normal"):
            print(f"  {name}: {r['requests']} requests, {r['non_2xx']} non-2xx, {r['socket_errors']} socket errors")
            if r["requests"] == 0 or r["non_2xx"] or r["socket_errors"]:
                failures.append(f"{name}: {r['non_2xx']} non-2xx, {r['socket_errors']} socket errors of "
                                f"{r['requests']}\n{r['output']}")
        else:
            print(f"  {name}: {r['requests']} requests, statuses {r['statuses']}")
            if set(r["statuses"]) != {503}:
                failures.append(f"{name}: expected only 503s, got {r['statuses']}")


def check_flat(label, before, after, failures):
    grew = after - before
    print(f"  {label}: {before} -> {after} KiB")
    if grew > RSS_SLACK_KIB:
        failures.append(f"{label} grew by {grew} KiB")


def steady_phase(work, port, seconds, failures):
    print(f"soak: phase 1, {seconds} s of mixed traffic on the same 2 workers")
    master = master_pid(work)
    traffic(port, max(2, seconds // 10), work)  # warm-up: instances, pools, connections
    before = snapshot(master)
    check_traffic(traffic(port, seconds, work), failures)
    after = snapshot(master)
    if after["workers"] != before["workers"]:
        failures.append(f"workers changed: {before['workers']} -> {after['workers']}")
    for pid in before["workers"]:
        if pid in after["workers"]:
            check_flat(f"worker {pid} RSS", before["worker_rss"][pid], after["worker_rss"][pid], failures)
            (_, others_before), (images, others) = before["worker_fds"][pid], after["worker_fds"][pid]
            if others != others_before or images > len(MODULES):
                failures.append(f"worker {pid} open files {others_before} -> {others}, "
                                f"{images} memory images for {len(MODULES)} modules")
    print(f"  workers {before['workers']} -> {after['workers']}, open files (memory images, others) "
          f"{before['worker_fds']} -> {after['worker_fds']}")


def reload_loop(work, port, upstream, stop, counts):
    """Reloads every second until `stop`; every tenth configuration is broken and must be refused."""
    n = 0
    while not stop.wait(1.0):
        n += 1
        broken = n % 10 == 0
        write_config(work, port, upstream, "ab"[n % 2], broken)
        test = nginx(work, "-t", "-q")
        if broken != (test.returncode != 0):
            counts["unexpected"].append(f"reload {n}: nginx -t exit {test.returncode}: {test.stderr.strip()}")
        os.kill(master_pid(work), signal.SIGHUP)
        counts["broken" if broken else "good"] += 1


def settle(master, count=2, limit=30):
    """Waits for shutting-down workers to leave, then for the master to free old cycles."""
    deadline = time.monotonic() + limit
    while len(children(master)) > count and time.monotonic() < deadline:
        time.sleep(0.2)


def reload_phase(work, port, upstream, seconds, failures):
    print(f"soak: phase 2, {seconds} s of mixed traffic with a reload every second")
    master = master_pid(work)
    before = snapshot(master)
    stop, counts = threading.Event(), {"good": 0, "broken": 0, "unexpected": []}
    reloader = threading.Thread(target=reload_loop, args=(work, port, upstream, stop, counts))
    # The first quarter warms the master's allocator up to its steady state of reloads.
    quarter = max(2, seconds // 4)
    reloader.start()
    traffic_results = {}
    try:
        warm = traffic(port, quarter, work, close=True)
        settle(master)
        middle = snapshot(master)
        traffic_results = traffic(port, seconds - quarter, work, close=True)
    finally:
        stop.set()
        reloader.join()
    for name, r in warm.items():
        for key in ("requests", "non_2xx", "socket_errors"):
            traffic_results[name][key] += r[key]
        for status, count in r["statuses"].items():
            traffic_results[name]["statuses"][status] = traffic_results[name]["statuses"].get(status, 0) + count
    check_traffic(traffic_results, failures)
    print(f"  reloads: {counts['good']} applied, {counts['broken']} broken and refused")
    failures.extend(counts["unexpected"])
    settle(master)
    after = snapshot(master)
    check_flat("master RSS", middle["master_rss"], after["master_rss"], failures)
    print(f"  master RSS before reloads {before['master_rss']} KiB; open files (memory images, others) "
          f"{before['master_fds']} -> {middle['master_fds']} -> {after['master_fds']}")
    if after["master_fds"] != before["master_fds"]:
        failures.append(f"master open files {before['master_fds']} -> {after['master_fds']}")
    if len(after["workers"]) != 2:
        failures.append(f"{len(after['workers'])} workers after the reloads settled")


def check_log(work, failures):
    with open(os.path.join(work, "error.log")) as f:
        log = f.read()
    crashes = [l for l in log.splitlines() if re.search(r"exited on signal|exited with code [1-9]|\[alert\]", l)]
    counts = {kind: log.count(kind) for kind in ("exceeded its deadline", "exceeded its memory limit", "trapped in")}
    print(f"soak: error log: {counts}; {len(crashes)} crash lines")
    if crashes:
        failures.append("crashes in the error log:\n" + "\n".join(crashes[:20]))
    if not all(counts.values()):
        failures.append(f"the misbehaving filter did not fail every way: {counts}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600, help="the whole run (both phases)")
    args = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory(prefix="inwasm-soak-") as work:
        with open(os.path.join(work, "broken.wasm"), "wb") as f:
            f.write(b"\0asm\x01\0\0\0garbage")
        port, upstream = free_port(), free_port()
        write_config(work, port, upstream, "a")
        started = nginx(work)
        if started.returncode != 0:
            sys.exit(f"soak: nginx did not start: {started.stderr}")
        try:
            time.sleep(0.5)
            steady_phase(work, port, args.seconds // 2, failures)
            reload_phase(work, port, upstream, args.seconds - args.seconds // 2, failures)
        finally:
            nginx(work, "-s", "stop")
            time.sleep(0.5)
        check_log(work, failures)
    if failures:
        print("soak: FAILED\n" + "\n".join(failures))
        sys.exit(1)
    print("soak: passed")


if __name__ == "__main__":
    main()
