"""What the benchmark and soak scripts share: the nginx and module under test, free ports,
waiting for a server, a process's children and RSS, and Envoy with a filter chain."""

import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILTERS = os.path.join(ROOT, "build", "filters")

# The nginx the module was built for (`INWASM_NGINX`: debian, the default, or 1.28).
FLAVOR = os.environ.get("INWASM_NGINX", "debian")
NGINX = "/usr/sbin/nginx" if FLAVOR == "debian" else os.path.join(ROOT, "target", "nginx", FLAVOR, "objs", "nginx")
NGINX_MODULE = os.path.join(ROOT, "build", "ngx_http_inwasm_module.so" if FLAVOR == "debian"
                            else f"ngx_http_inwasm_module-{FLAVOR}.so")
ENVOY = os.path.join(ROOT, "target", "envoy", "envoy")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=30):
    """Returns once something accepts connections on `port` (polled every 10 ms)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    sys.exit(f"nothing listens on port {port} after {limit} s")


def children(pid):
    """The child processes of single-threaded `pid` (an nginx master's workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(p) for p in f.read().split())


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def dynamic_module_filter(name, module_config, filter_name, filter_config=""):
    """An `http_filters` entry for an Envoy dynamic module: `module_config` is its
    `dynamic_module_config` as a YAML flow mapping, `filter_config` (if any) the lines of its
    `filter_config`."""
    return f"""          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {module_config}
              filter_name: {filter_name}""" + filter_config


def inwasm_filter(value):
    """An `http_filters` entry for this project's Envoy module; `value` is its filter
    configuration as a YAML flow mapping (`{module: ..., timeout: ...}`)."""
    return dynamic_module_filter("inwasm", "{name: inwasm}", "proxy_wasm", f"""
              filter_config:
                "@type": type.googleapis.com/google.protobuf.Struct
                value: {value}""")


def envoy_yaml(port, admin, body, http_filters, stat_prefix, upstream=None):
    """Envoy answering every request with `body` itself (or, given an `upstream` port, passing
    it to 127.0.0.1:`upstream`), through `http_filters` (entries as `inwasm_filter` makes
    them; the router is appended)."""
    with open(os.path.join(ROOT, "ci", "envoy-listener.yaml")) as f:
        template = f.read()
    route, clusters = f'direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}', ""
    if upstream is not None:
        route = "route: {cluster: upstream, timeout: 30s}"
        clusters = f"""  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"""
    values = {"ADMIN": str(admin), "PORT": str(port), "STAT_PREFIX": stat_prefix, "ROUTES": "", "ROUTE": route,
              "FILTERS": "".join(f + "\n" for f in http_filters), "CLUSTERS": clusters}
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    return template


def start_envoy(config, log_path, log_level, cpu=None):
    """Envoy with one worker on `config`, finding this project's module in build/; `cpu`
    pins it. Returns the process."""
    env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=os.path.join(ROOT, "build"))
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    log = open(log_path, "w")
    return subprocess.Popen(pin + [ENVOY, "-c", config, "--concurrency", "1", "--disable-hot-restart",
                                   "--log-level", log_level], env=env, stdout=log, stderr=log)


def start_nginx(work, name, cpu, http, wasm=None, wait=(), wait_limit=30):
    """An nginx with one worker pinned to CPU `cpu`, its files named `name` in `work`, the
    `http {}` block's contents `http` and, given `wasm` (a `wasm {}` block's contents), this
    project's module. Waits for the `wait` ports; returns (worker pid, stop)."""
    conf = os.path.join(work, f"{name}.conf")
    module = f"load_module {NGINX_MODULE};\n" if wasm is not None else ""
    wasm_block = f"wasm {{ {wasm} }}\n" if wasm is not None else ""
    with open(conf, "w") as f:
        f.write(f"""{module}worker_processes 1;
worker_cpu_affinity {1 << cpu:b};
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
events {{ worker_connections 1024; }}
{wasm_block}http {{
    access_log off;
{http}
}}
""")
    subprocess.run([NGINX, "-p", work, "-c", conf], check=True)
    for port in wait:
        wait_port(port, wait_limit)
    with open(f"{work}/{name}.pid") as f:
        master = int(f.read().strip())
    # The listening sockets open before the worker starts (after the modules are compiled).
    deadline = time.monotonic() + wait_limit
    while not children(master) and time.monotonic() < deadline:
        time.sleep(0.01)
    if not children(master):
        sys.exit(f"nginx {work}/{name}.conf has no worker after {wait_limit} s")
    return children(master)[0], lambda: subprocess.run([NGINX, "-p", work, "-c", conf, "-s", "stop"],
                                                        capture_output=True)


def start_envoys(work, variants, body, stat_prefix, upstream=None, wait_limit=30):
    """One Envoy on CPU 0 per `variants` entry (name: its `http_filters`), as `envoy_yaml`
    makes them. Returns ({name: (port, pid)}, stop)."""
    servers, processes = {}, []
    for name, http_filters in variants.items():
        port, admin = free_port(), free_port()
        path = os.path.join(work, f"envoy-{len(servers)}.yaml")
        with open(path, "w") as f:
            f.write(envoy_yaml(port, admin, body, http_filters, stat_prefix, upstream=upstream))
        processes.append(start_envoy(path, os.path.join(work, f"envoy-{len(servers)}.log"), "warn", cpu=0))
        servers[name] = (port, processes[-1].pid)
    for port, _ in servers.values():
        wait_port(port, wait_limit)

    def stop():
        for p in processes:
            p.terminate()
            p.wait()
    return servers, stop
