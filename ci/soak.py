#!/usr/bin/env python3
"""`make soak`: nginx with 2 workers under wrk, normal requests mixed with spinning, memory-hogging,
panicking and recursing ones, in two phases of equal length:

1. steady: the same workers all along. No worker may exit, their RSS must be the same at the
   end as halfway through, and their open files as after the warm-up.
2. reloads: `nginx -s reload` every second, alternating two configurations (the good filter's
   response header changes), with every tenth reload a broken module that must be refused
   while the old configuration keeps serving. The master's RSS and open files must stay flat.

Beside them, all along, a hostile tenant (the script test filter) makes the host spend what
it can outside its own memory: floods of stdout, shared data, queues and metrics, http calls
to an upstream that never answers (from requests and from a 5 ms tick), CPU in every
callback it may, and requests it pauses with large headers whose clients give up.

In both phases every normal request must succeed (no non-2xx answer, no socket error), with a
latency that does not creep up (the second half's p99 within twice the first's, plus 50 ms),
every misbehaving one must get its 503, the hostile ones 200, 503 or 504, and the error log
must show no crash. During reloads the
normal requests each use their own connection (`Connection: close`): a worker that shuts
down closes its idle keep-alive connections, which races with a client sending its next
request on one, and wrk counts that as an error even against bare nginx; HTTP clients retry
such a request on a new connection. The good tenant (the
header example) and the misbehaving one (the limits example) are separate modules, so the
second's failures must never reach the first's requests.
"""

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from servers import FILTERS, NGINX, NGINX_MODULE, children, free_port, rss_kib

# The misbehaving requests: the limits example fails on these path endings.
BAD_PATHS = ["/bad/loop", "/bad/hog", "/bad/panic", "/bad/recurse",
             "/isolated/loop", "/isolated/hog", "/isolated/panic"]


def status_script(paths):
    """A wrk script that requests `paths` in turn and counts the answers' statuses; its done()
    prints them as `status count` lines."""
    return """
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
""" % ", ".join(f'"{p}"' for p in paths)


BAD_SCRIPT = status_script(BAD_PATHS)

# The hostile tenant's locations and scripts (see the script filter's verbs).
HOSTILE = {
    "stdout": "request_headers stdout 1048576",
    "shared": "request_headers shared-fill k 32 65536",
    "queues": "request_headers queue-fill q 2000",
    "metrics": "request_headers metric-fill m 2000",
    "calls": "request_headers call-fill 64 blackhole / timeout=1000\nrequest_headers respond 200 called",
    "spin": "request_headers spin-ms 15\nresponse_headers spin-ms 15\nlog spin-ms 15",
    "pause": "request_headers bulk-header request x-big 65536\nrequest_headers pause",
}
# A root context that ticks every 5 ms, each tick calling the black hole and spinning.
HOSTILE_TICKER = "configure tick 5\ntick call-fill 8 blackhole / timeout=1000\ntick spin-ms 5"
HOSTILE_SCRIPT = status_script(f"/hostile/{name}" for name in HOSTILE)

# How far a worker's open files (memory images aside) may move between the two measurements
# of a phase: the hostile ticker opens and closes call connections all the time (8 a tick),
# which the count of those in flight cannot always tell apart. A leak grows past it.
FD_SLACK = 16

# The allowed growth of RSS (KiB) between the two measurements of a phase.
RSS_SLACK_KIB = 8 * 1024


def write_config(work, port, upstream, blackhole, variant, broken=False):
    """The configuration `variant` ("a" or "b") sets x-soak to; `broken` adds an invalid module;
    `blackhole` is the port of an upstream that never answers."""
    broken_module = f"module broken {work}/broken.wasm;" if broken else ""
    hostile = "\n".join(f"""        location /hostile/{name} {{ proxy_wasm hostile '{script}'; proxy_pass http://backend; }}"""
                        for name, script in HOSTILE.items())
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
    module hostile {FILTERS}/filter_script.wasm;
    {broken_module}
}}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    upstream blackhole {{ server 127.0.0.1:{blackhole}; }}
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
        proxy_wasm_pause_timeout 2s;
{hostile}
        location = /hostile/ticker {{ proxy_wasm hostile '{HOSTILE_TICKER}'; return 204; }}
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
MODULES = ("good", "limits", "hostile")


# The black hole's port: the hostile ticker always has calls to it in flight (at most its
# 64), which the open-file counts leave out.
BLACKHOLE_PORT = None


def sockets_to(port):
    """The inodes of the TCP sockets connected to 127.0.0.1:`port`."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def open_files(pid):
    """What `pid` has open: (memory images, everything else). A worker opens a module's
    memory image at its first instance of it, which the warm-up may not have reached."""
    calls = sockets_to(BLACKHOLE_PORT) if BLACKHOLE_PORT else set()
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            pass
    targets = [t for t in targets if t.removeprefix("socket:[").removesuffix("]") not in calls]
    images = sum("wasm-memory-image" in target for target in targets)
    return images, len(targets) - images


def snapshot(master):
    time.sleep(2)  # connections of the load just ended close
    workers = {}
    for pid in children(master):
        try:
            workers[pid] = (rss_kib(pid), open_files(pid))
        except FileNotFoundError:  # an old worker that finished shutting down meanwhile
            pass
    return {"master_rss": rss_kib(master), "master_fds": open_files(master), "workers": sorted(workers),
            "worker_rss": {p: rss for p, (rss, _) in workers.items()},
            "worker_fds": {p: fds for p, (_, fds) in workers.items()}}


class Wrk:
    """One wrk run in the background; `result()` waits and parses its summary."""

    def __init__(self, url, seconds, connections, script=None, close=False):
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", url]
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
                "statuses": statuses, "p99_ms": percentile_ms(out, "99%"), "output": out}


def percentile_ms(out, which):
    """A latency percentile from wrk's `--latency` table, in ms (0 when absent)."""
    found = re.search(rf"^\s+{re.escape(which)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not found:
        return 0.0
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]


class Blackhole:
    """An upstream that accepts connections and never answers (the newest 1,000 held open)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.hold, daemon=True).start()

    def hold(self):
        held = collections.deque()
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            held.append(conn)
            if len(held) > 1000:
                held.popleft().close()


def abandon_paused(port, stop, counts):
    """Clients that send a request the hostile filter pauses and give up on it after 0.3 s."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"GET /hostile/pause HTTP/1.1\r\nHost: soak\r\n\r\n")
                stop.wait(0.3)
            counts["abandoned"] += 1
        except OSError:
            counts["errors"] += 1
        stop.wait(0.05)


def traffic(port, seconds, work, close=False):
    """Normal and misbehaving wrk runs side by side for `seconds`; returns their results.
    `close`: a connection per normal request."""
    scripts = {}
    for name, text in (("bad", BAD_SCRIPT), ("hostile", HOSTILE_SCRIPT)):
        scripts[name] = os.path.join(work, f"{name}.lua")
        with open(scripts[name], "w") as f:
            f.write(text)
    stop, abandoned = threading.Event(), {"abandoned": 0, "errors": 0}
    abandoning = threading.Thread(target=abandon_paused, args=(port, stop, abandoned))
    abandoning.start()
    runs = {
        "normal (good tenant)": Wrk(f"http://127.0.0.1:{port}/good/ok", seconds, 16, close=close),
        "normal (isolated, beside failing requests)":
            Wrk(f"http://127.0.0.1:{port}/isolated/ok", seconds, 8, close=close),
        "misbehaving": Wrk(f"http://127.0.0.1:{port}/", seconds, 4, scripts["bad"]),
        # A connection per request: every worker meets every hostile path.
        "hostile": Wrk(f"http://127.0.0.1:{port}/", seconds, 4, scripts["hostile"], close=True),
    }
    results = {name: run.result() for name, run in runs.items()}
    stop.set()
    abandoning.join()
    results["hostile"]["abandoned"] = abandoned
    return results


def check_traffic(results, failures):
    for name, r in results.items():
        if name.startswith("normal"):
            print(f"  {name}: {r['requests']} requests, {r['non_2xx']} non-2xx, {r['socket_errors']} socket errors, "
                  f"p99 {r['p99_ms']:.1f} ms")
            if r["requests"] == 0 or r["non_2xx"] or r["socket_errors"]:
                failures.append(f"{name}: {r['non_2xx']} non-2xx, {r['socket_errors']} socket errors of "
                                f"{r['requests']}\n{r['output']}")
        elif name == "hostile":
            print(f"  {name}: {r['requests']} requests, statuses {r['statuses']}, clients that gave up on a "
                  f"paused request: {r['abandoned']['abandoned']} ({r['abandoned']['errors']} could not connect)")
            if not r["statuses"] or not set(r["statuses"]) <= {200, 503, 504}:
                failures.append(f"{name}: expected 200, 503 or 504, got {r['statuses']}")
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
    halves = [traffic(port, seconds // 2, work)]
    # RSS is compared over the second half: wrk's connections land on the workers unevenly, so
    # one may still be reaching its steady state (instances, pools) in the first.
    middle = snapshot(master)
    halves.append(traffic(port, seconds - seconds // 2, work))
    for half in halves:
        check_traffic(half, failures)
    for name in (n for n in halves[0] if n.startswith("normal")):
        first, second = halves[0][name]["p99_ms"], halves[1][name]["p99_ms"]
        if second > 2 * first + 50:
            failures.append(f"{name}: p99 crept up from {first:.1f} ms to {second:.1f} ms")
    after = snapshot(master)
    if after["workers"] != before["workers"]:
        failures.append(f"workers changed: {before['workers']} -> {after['workers']}")
    for pid in before["workers"]:
        if pid in after["workers"]:
            print(f"  worker {pid} RSS after the warm-up: {before['worker_rss'][pid]} KiB")
            check_flat(f"worker {pid} RSS over the second half", middle["worker_rss"].get(pid, 0),
                       after["worker_rss"][pid], failures)
            (_, others_before), (images, others) = before["worker_fds"][pid], after["worker_fds"][pid]
            if abs(others - others_before) > FD_SLACK or images > len(MODULES):
                failures.append(f"worker {pid} open files {others_before} -> {others}, "
                                f"{images} memory images for {len(MODULES)} modules")
    print(f"  workers {before['workers']} -> {after['workers']}, open files (memory images, others) "
          f"{before['worker_fds']} -> {after['worker_fds']}")


def reload_loop(work, port, upstream, blackhole, stop, counts):
    """Reloads every second until `stop`; every tenth configuration is broken and must be refused."""
    n = 0
    while not stop.wait(1.0):
        n += 1
        broken = n % 10 == 0
        write_config(work, port, upstream, blackhole, "ab"[n % 2], broken)
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


def reload_phase(work, port, upstream, blackhole, seconds, failures):
    print(f"soak: phase 2, {seconds} s of mixed traffic with a reload every second")
    master = master_pid(work)
    before = snapshot(master)
    stop, counts = threading.Event(), {"good": 0, "broken": 0, "unexpected": []}
    reloader = threading.Thread(target=reload_loop, args=(work, port, upstream, blackhole, stop, counts))
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
        global BLACKHOLE_PORT
        port, upstream, blackhole = free_port(), free_port(), Blackhole()
        BLACKHOLE_PORT = blackhole.port
        write_config(work, port, upstream, blackhole.port, "a")
        started = nginx(work)
        if started.returncode != 0:
            sys.exit(f"soak: nginx did not start: {started.stderr}")
        try:
            time.sleep(0.5)
            steady_phase(work, port, args.seconds // 2, failures)
            reload_phase(work, port, upstream, blackhole.port, args.seconds - args.seconds // 2, failures)
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
