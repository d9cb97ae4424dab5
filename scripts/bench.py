#!/usr/bin/env python3
"""The benchmark of docs/performance.md: our edge against direct, nginx,
rathole and nginx in front of rathole, every row for every comparator in
one run, on loopback. docs/performance.md has the targets, every
comparator's settings, what each row measures and how to read the output.

Run it through scripts/bench (which installs the tools and builds the
binaries); this file only orchestrates. Standard library only.

    scripts/bench            ~10 s per row, scale rows with 1,000 sidecars
                             and 10,000 open connections
    scripts/bench --quick    ~2 s per row, 20 sidecars / 200 connections
                             (CI: proves the harness works; slow numbers
                             never fail it, missing numbers do: any for a
                             comparator, all of them for the edge)
    scripts/bench --only latency,h2 --keep   a subset; keep configs and logs

What runs (all on 127.0.0.1, ports picked free below 32768 or by the
kernel, every process started here and stopped on exit or Ctrl-C):

  upstream  nginx, 1 worker, `return 200` (24-byte body) on /, a sparse
            file /big.bin for the bulk rows (sendfile) and the same file as
            /stall.bin for the stalled row, and the same over TLS + HTTP/2
            for the h2 row
  direct    client -> upstream
  nginx     client -> nginx reverse proxy (2 workers = cores, upstream
            keepalive, HTTP/1.1, Connection "", no disk buffering; buffers
            for large downloads on /big.bin, NGINX_BULK_BUFFERS) -> upstream
  rathole   client -> rathole server -> rathole client -> upstream (TCP)
  nginx+rathole  client -> nginx (as above) -> rathole server -> rathole
            client -> upstream: an HTTP hop and a tunnel, the edge's work
  edge      client -> edge-proxy -> gRPC tunnel -> sidecar -> upstream,
            Host hello-8080-bench.preview.localhost, sidecar defaults
            (2 sessions)

HTTP/2 row: h2load over TLS (ALPN h2, the dev-certs certificate) to the
upstream's TLS port (direct), to nginx, nginx+rathole and the edge, which terminate TLS
and speak HTTP/1.1 onwards; rathole forwards the TLS bytes to the upstream's
TLS port. Every request carries the same Host header. Load: wrk (HTTP/1.1), h2load
(HTTP/2 over TLS), curl (bulk), bench-latency (one connection, every
request timed), bench-delay (5 ms each way, for the 10 ms RTT row) and
bench-scale (many sidecars and open connections against one edge), the
last three from the bench/ crate.

Output: one table on stdout, target/bench/bench.json and bench.md.
"""

import argparse
import datetime
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE_DIR = os.environ.get("RELEASE_DIR") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/preview-edge/target"), "release")
RATHOLE = os.environ.get("RATHOLE") or os.path.expanduser("~/.cache/preview-edge/tools/bin/rathole")

# "nginx+rathole" is nginx as the reverse proxy in front of a rathole
# tunnel: an HTTP-aware hop and a tunnel, the same work as edge + sidecar
# (the targets' musts compare us with it, their aims with each half alone).
COMPARATORS = ["direct", "nginx", "rathole", "nginx+rathole", "edge"]
MIDDLE_HOPS = [c for c in COMPARATORS if c != "direct"]  # the rows about the hop in between
ROW_KEYS = ["rps_c64", "rps_c1", "latency", "conn_rate", "bulk", "h2", "stalled", "bulk_rtt", "scale", "routes",
            "policy", "wasm", "auth", "limits", "transport", "tcp"]
# The transport rows: a second sidecar, environment benchws, tunnels over a
# WebSocket to the edge's HTTP port (ws://) instead of gRPC to its tunnel
# port; the same service through each, alternating.
WS_HOST = "hello-8080-benchws.preview.localhost"
# The TCP rows: the bench sidecar also offers the upstream's port as a raw
# TCP service (protocol: tcp), reached through a TCP port of the edge
# (`tcp_ports:`), beside rathole's TCP tunnel to the same port: the same
# work, a TCP tunnel; and through `sidecar access tcp` (listening locally;
# a WebSocket to the edge per connection, one more hop), its cost stated.
TCP_HOST = "raw-8080-bench.preview.localhost"
# The policy and wasm rows: custom-domain routes to the same service, one
# without a header policy, one with a typical policy (strip lists, a
# templated request header, security headers) applied natively, one with
# the same policy as the configuration of the header-policy wasm filter
# (scripts/build-wasm; $HEADER_POLICY_WASM, which scripts/bench sets) in
# the edge's wasm host; the edge's requests/s through each, alternating.
POLICY_HOST, PLAIN_HOST, WASM_HOST = "policy.bench.test", "plain.bench.test", "wasm.bench.test"
# The auth row: a route that needs a bearer JWT beside the public one
# (the bench's edge has `auth:` with a public default), with an ES256 and
# an RS256 token from test-support/jwt-keys (bench-token mints them).
JWT_HOST = "jwt.bench.test"
JWT_ISSUER, JWT_AUDIENCE = "https://id.bench.test", "bench"
JWT_KEYS = os.path.join(ROOT, "test-support", "jwt-keys")
# A route with a rate limit and an in-flight cap of its own that never
# trigger, for `scripts/callgrind --route limited` (the limits rows reload
# the config instead, to measure per-address and per-identity limits).
LIMITED_HOST = "limited.bench.test"
# A route whose limit refuses all but its first request an hour, for
# `scripts/callgrind --route refused`: what a refusal (429) costs the edge.
REFUSED_HOST = "refused.bench.test"
ROUTE_HOSTS = {"plain": PLAIN_HOST, "policy": POLICY_HOST, "wasm": WASM_HOST, "jwt": JWT_HOST,
               "cookie": JWT_HOST, "limited": LIMITED_HOST, "refused": REFUSED_HOST}


def session_cookie(bench_token):
    """A session cookie for the jwt route's host, sealed with the bench
    edge's session secret (the edge never signs anyone in here)."""
    return subprocess.run([bench_token, "--session-secret", os.path.join(JWT_KEYS, "session.key"),
                           "--host", JWT_HOST], check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()
BENCH_POLICY = ("{ strip: { request: [x-internal-*], response: [server, x-powered-by] }, "
                "request: [ { set: { x-request-source: edge, x-route: '{route}' } } ], "
                "security_headers: { hsts: true, content_type_options: true, referrer_policy: true, "
                "frame_options: deny } }")


def policy_routes():
    """The `auth:` and `routes:` sections of the bench's edge config (the
    wasm route only when the module is built)."""
    routes = f"""auth:
  issuers:
    - issuer: {JWT_ISSUER}
      algorithms: [ES256, RS256]
      keys: [{JWT_KEYS}/ec.pub, {JWT_KEYS}/rsa.pub]
      audiences: [{JWT_AUDIENCE}]
  login:
    issuer: http://127.0.0.1:9
    client_id: bench
    url: http://auth.bench.test
  session: {{ secret_file: {JWT_KEYS}/session.key }}
  access: {{ default: public }}
routes:
  - {{ name: plain, host: {PLAIN_HOST}, target: bench/hello:8080 }}
  - {{ name: jwt, host: {JWT_HOST}, target: bench/hello:8080, access: authenticated }}
  - {{ name: policy, host: {POLICY_HOST}, target: bench/hello:8080, header_policy: {BENCH_POLICY} }}
  - {{ name: limited, host: {LIMITED_HOST}, target: bench/hello:8080,
      limits: {{ rate: 100000000, period: 1s, in_flight: 100000 }} }}
  - {{ name: refused, host: {REFUSED_HOST}, target: bench/hello:8080, limits: {{ rate: 1, period: 1h }} }}
"""
    module = os.environ.get("HEADER_POLICY_WASM")
    if module:
        routes += f"""  - name: wasm
    host: {WASM_HOST}
    target: bench/hello:8080
    wasm_filter: {{ module: {module}, configuration: {BENCH_POLICY} }}
"""
    return routes


HOST = "hello-8080-bench.preview.localhost"
# The flood row's steady client: requests/s, within the row's 1,000/s limit.
STEADY_RATE = 500
HOST_RTT = "hello-8080-benchrtt.preview.localhost"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
# The bulk rows download BULK_PATH; the stalled row stalls downloads of
# STALL_PATH, the same sparse file under another name, so that nginx keeps
# its default (small) buffers there: each row gets nginx as a careful
# operator would set it up for that traffic.
BULK_PATH = "/big.bin"
STALL_PATH = "/stall.bin"

# What a comparator cannot do by design, which its numbers leave out: the
# report marks the column or the cells and prints the note under the
# table (docs/performance.md, "Footnotes").
COLUMN_FOOTNOTES = {
    "rathole": "rathole is a TCP tunnel and parses no HTTP: it cannot route by Host (one listening port per "
               "service), add forwarding headers or request ids, or answer an error per request. Its numbers are "
               "the cost of a bare byte pipe; nginx+rathole adds the HTTP hop.",
}
FOOTNOTES = {
    ("conn_rate", "rathole"): "rathole has no upstream pooling: it never sees where a request ends, so it cannot "
                              "keep a connection to the service for the next visitor. Each visitor connection takes "
                              "a fresh tunnel data channel and makes a fresh TCP connection to the upstream, which "
                              "the upstream accepts and closes too. nginx, nginx+rathole (nginx keeps its "
                              "connections to the rathole server) and the edge (the sidecar keeps keep-alive "
                              "connections to the service) reuse theirs.",
    ("h2_rps", "rathole"): "rathole cannot terminate TLS or HTTP/2: it carries the TLS bytes to the upstream's own "
                           "TLS + HTTP/2 port, so the upstream (one nginx worker) does the work that nginx, "
                           "nginx+rathole and the edge do in the middle hop.",
}
SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"

# nginx's proxy settings for large downloads, in the download location of
# the nginx and nginx+rathole comparators (bulk rows only). Chosen by
# same-run A/Bs on this machine (docs/performance.md, "nginx for large
# downloads"): 1 GiB through nginx, medians of 1.0-1.25 GB/s with the
# defaults and 1.66-1.95 GB/s with these; CPU per small request did not
# move.
NGINX_BULK_BUFFERS = """\
# nginx for large downloads (scripts/bench.py, docs/performance.md).
# Buffering stays on (the default, stated here): nginx reads the
# upstream as fast as it sends, into the buffers below, while it
# writes to the client. With it off, nginx passes on each read
# synchronously, at most proxy_buffer_size bytes at a time: that needs a
# large proxy_buffer_size, allocated for every request, small ones too,
# and measured no faster here (1 MiB: within the noise of the setting
# below).
proxy_buffering on;
# The response head is read into this buffer; in the buffered pipe
# it then serves as one more body buffer. One page (the default) is
# enough for the head, and a larger one made no difference.
proxy_buffer_size 4k;
# The body: the default is 8 buffers of one page (32 KiB in flight,
# a read and a write per 4 KiB). 16 x 64 KiB lets nginx hold up to
# 1 MiB of one response, in large reads and writes; the buffers are
# allocated only as a response fills them, so small responses pay
# nothing for them.
proxy_buffers 16 64k;
# At most this much may be queued for the client while the rest of
# the buffers keep reading the upstream (nginx requires it to be at
# least one buffer and less than all of them minus one).
proxy_busy_buffers_size 256k;
# Never spill to a temporary file when the client is slower: nginx
# stops reading the upstream instead. The disk would only add a write
# and a read of the same bytes.
proxy_max_temp_file_size 0;
# sendfile and tcp_nopush are not set here: they apply to files nginx
# sends from disk (the upstream has them on). A proxied body is in
# memory, and without temporary files there is no file to send.
"""


def log(msg):
    sys.stderr.write(f"\033[1m==> {msg}\033[0m\n")
    sys.stderr.flush()


def note(msg):
    sys.stderr.write(f"    {msg}\n")
    sys.stderr.flush()


class HarnessError(Exception):
    pass


# ------------------------------------------------------------------ processes

class Processes:
    """Everything this run starts, each in its own process group (so
    Ctrl-C reaches only us, and stopping a group stops its children, e.g.
    nginx workers or bench-scale's helpers)."""

    def __init__(self, work):
        self.work = work
        self.running = []  # (name, Popen)

    def start(self, name, argv, env=None, ready=None, timeout=20.0):
        """Starts argv, logging to WORK/NAME.log; `ready(log_text)` returning
        true (or a regex found in the log) means started."""
        path = os.path.join(self.work, f"{name}.log")
        out = open(path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, start_new_session=True)
        out.close()
        self.running.append((name, proc))
        if ready is None:
            return proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text(name)
            ok = re.search(ready, text, re.M) if isinstance(ready, str) else ready(text)
            if ok:
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise HarnessError(f"{name} did not start ({' '.join(argv)}):\n{self.log_text(name)[-3000:]}")

    def log_text(self, name):
        try:
            with open(os.path.join(self.work, f"{name}.log"), "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self.running = [(n, p) for n, p in self.running if p is not proc]

    def stop_all(self, grace=10.0):
        """TERM to every group at once, KILL to what is left after `grace`."""
        procs = list(self.running)
        for _, proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        for name, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                if time.monotonic() > deadline - grace + 3:
                    note(f"{name} took {time.monotonic() - deadline + grace:.1f} s to stop")
                continue
            except subprocess.TimeoutExpired:
                note(f"{name} ignored SIGTERM for {grace:.0f} s; killing it")
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the leader is still ours, so is its group
                proc.wait(timeout=5)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired) as e:
                note(f"{name} (pid {proc.pid}): {e!r}")
        self.running = []


_used_ports = set()


def free_port():
    """A free TCP port on 127.0.0.1 below the ephemeral range."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port in _used_ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise HarnessError("no free port found")


def http_ok(addr, host=HOST, path="/", timeout=2.0):
    """One plain GET; true on a 200."""
    h, p = addr.rsplit(":", 1)
    try:
        with socket.create_connection((h, int(p)), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_http(name, addr, host=HOST, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(addr, host):
            return
        time.sleep(0.1)
    raise HarnessError(f"{name}: no 200 from http://{addr}/ (Host {host}) within {timeout:.0f} s")


def run(argv, timeout, check=True):
    """Runs a load generator; returns its stdout (stderr appended)."""
    try:
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{argv[0]} ran over {timeout:.0f} s") from e
    out = res.stdout.decode(errors="replace")
    if check and res.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {res.returncode}:\n{out[-2000:]}")
    return out


# ------------------------------------------------------------------ /proc

def proc_children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def cpu_seconds(pids):
    """(utime, stime) of the processes (all their threads, dead ones too)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return user / CLK_TCK, system / CLK_TCK


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# ------------------------------------------------------------------ setup

class Bench:
    def __init__(self, args, work):
        self.quick = args.quick
        self.work = work
        self.procs = Processes(work)
        self.duration = 2 if args.quick else 10
        # Load rows run each comparator in rounds, alternating, and keep each
        # one's median round: this machine's speed drifts within a run, and
        # one long measurement per comparator turns that drift into ratios.
        self.rounds = 1 if args.quick else 3
        # A feature's row: five rounds at least, its budget being a few per
        # cent and this machine's rounds moving by more than that.
        self.feature_rounds = self.rounds if args.quick else max(self.rounds, 5)
        self.round_seconds = max(1, round(self.duration / self.rounds))
        self.bulk_bytes = (256 if args.quick else 1024) * MIB
        self.scale_n = args.sidecars or (20 if args.quick else 1000)
        self.scale_m = args.connections or (200 if args.quick else 10000)
        self.stall_n = 20 if args.quick else 100
        self.token = f"bench-{random.getrandbits(64):016x}"
        self.addr = {}     # comparator -> host:port (plain HTTP)
        self.tls = {}      # comparator -> host:port (TLS, HTTP/2)
        self.hop = {}      # comparator -> {label: pid}
        self.warnings = []
        self.only = set(args.only.split(",")) if args.only else None
        self.tunnel_tls = args.tunnel_tls
        # One build for the whole run, even if cargo replaces the binaries meanwhile.
        bindir = os.path.join(work, "bin")
        os.makedirs(bindir)
        for name in ("edge-proxy", "sidecar", "dev-certs", "bench-latency", "bench-delay", "bench-scale",
                     "bench-routes", "bench-token"):
            src = os.path.join(RELEASE_DIR, name)
            if not os.path.exists(src):
                raise HarnessError(f"{src} is missing: build with `cargo build --release --workspace --bins`")
            shutil.copy2(src, bindir)
        self.bin = lambda name: os.path.join(bindir, name)

    def want(self, key):
        return self.only is None or key in self.only

    # -- upstream
    def start_nginx(self, name, purpose, workers, http, ports):
        """Runs nginx from its own prefix directory under the work dir, with
        `http` (indented lines) inside the common `http` block, and waits for
        `ports`."""
        d = os.path.join(self.work, name)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        temp = "\n".join(f"  {k}_temp_path {d}/tmp/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""# {purpose}
daemon off;
master_process on;
worker_processes {workers};
{user}
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
{http}}}
""")
        proc = self.procs.start(name, ["nginx", "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")])
        for port in ports:
            deadline = time.monotonic() + 10
            while not self._port_open(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = open(os.path.join(d, "error.log")).read() if os.path.exists(os.path.join(d, "error.log")) else ""
                    raise HarnessError(f"{name} did not start:\n{self.procs.log_text(name)}\n{err}")
                time.sleep(0.05)
        return proc

    @staticmethod
    def _port_open(port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def certs(self):
        d = os.path.join(self.work, "certs")
        run([self.bin("dev-certs"), d, "--name", "*.preview.localhost", "--name", "localhost"], timeout=30)
        return os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")

    def setup(self):
        log("certificates, upstream")
        self.cert, self.key = self.certs()
        www = os.path.join(self.work, "www")
        os.makedirs(www)
        with open(os.path.join(www, BULK_PATH.lstrip("/")), "wb") as f:
            f.truncate(self.bulk_bytes)  # sparse: reads are zeros, no disk
        os.link(os.path.join(www, BULK_PATH.lstrip("/")), os.path.join(www, STALL_PATH.lstrip("/")))
        up, up_tls = free_port(), free_port()
        self.start_nginx("upstream", "the upstream every comparator reaches", 1, f"""  default_type application/octet-stream;
  # The downloads leave the page cache through sendfile() (no copy into
  # nginx), in full packets (tcp_nopush: TCP_CORK while a file is sent),
  # and the last part of a response goes out at once (tcp_nodelay).
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  ssl_certificate {self.cert};
  ssl_certificate_key {self.key};
  server {{
    listen 127.0.0.1:{up} backlog=4096;
    listen 127.0.0.1:{up_tls} ssl http2 backlog=4096;
    root {www};
    location = / {{ return 200 "Hello from the upstream\\n"; }}
  }}
""", [up, up_tls])
        self.upstream = f"127.0.0.1:{up}"
        self.upstream_tls = f"127.0.0.1:{up_tls}"
        self.addr["direct"] = self.upstream
        self.tls["direct"] = self.upstream_tls
        self.hop["direct"] = {}
        wait_http("upstream", self.upstream)

        self.start_edge()
        self.start_nginx_proxy()
        self.start_rathole()
        self.start_nginx_rathole()
        self.start_sidecar()
        self.start_transports()

    # -- nginx reverse proxy
    def nginx_proxy(self, name, purpose, upstream, delayed):
        """nginx as a reverse proxy to `upstream` (plain HTTP and TLS with
        HTTP/2), and on a third port to `delayed` (the 10 ms RTT row).
        Returns (proc, port, TLS port, RTT port)."""
        port, port_tls, port_rtt = free_port(), free_port(), free_port()
        os.makedirs(os.path.join(self.work, name), exist_ok=True)
        bulk_conf = os.path.join(self.work, name, "bulk-buffers.conf")
        with open(bulk_conf, "w") as f:
            f.write(NGINX_BULK_BUFFERS)
        proc = self.start_nginx(name, purpose, os.cpu_count() or 2, f"""  keepalive_requests 10000000;
  keepalive_timeout 300s;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_max_temp_file_size 0;
  ssl_certificate {self.cert};
  ssl_certificate_key {self.key};
  upstream up {{ server {upstream}; keepalive 256; keepalive_requests 10000000; }}
  upstream up_delayed {{ server {delayed}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    listen 127.0.0.1:{port_tls} ssl http2 backlog=4096;
    location / {{ proxy_pass http://up; }}
    location = {BULK_PATH} {{ proxy_pass http://up; include {bulk_conf}; }}
  }}
  server {{
    listen 127.0.0.1:{port_rtt};
    location / {{ proxy_pass http://up_delayed; }}
    location = {BULK_PATH} {{ proxy_pass http://up_delayed; include {bulk_conf}; }}
  }}
""", [port, port_tls, port_rtt])
        return proc, port, port_tls, port_rtt

    def start_nginx_proxy(self):
        log("nginx reverse proxy")
        # bench-delay in front of the upstream, for the 10 ms RTT row: nginx
        # -> delay -> upstream (the hop a proxy adds, like edge -> sidecar).
        delay = self.start_delay("delay-nginx", self.upstream)
        proc, port, port_tls, self.nginx_rtt_port = self.nginx_proxy(
            "nginx", "nginx as a reverse proxy (the comparator)", self.upstream, delay)
        self.addr["nginx"] = f"127.0.0.1:{port}"
        self.tls["nginx"] = f"127.0.0.1:{port_tls}"
        self.hop["nginx"] = {"nginx": proc.pid}
        wait_http("nginx", self.addr["nginx"])

    def start_nginx_rathole(self):
        log("nginx in front of rathole")
        addrs, srv, cli = self.rathole_pair("nx-rathole", {"web": self.upstream})
        # The RTT row starts its own delayed rathole pair on this port.
        self.nx_rathole_rtt_visitor = free_port()
        proc, port, port_tls, self.nx_rathole_rtt_port = self.nginx_proxy(
            "nginx-rathole", "nginx as a reverse proxy through a rathole tunnel (the comparator)",
            addrs["web"], f"127.0.0.1:{self.nx_rathole_rtt_visitor}")
        comp = "nginx+rathole"
        self.addr[comp] = f"127.0.0.1:{port}"
        self.tls[comp] = f"127.0.0.1:{port_tls}"
        self.hop[comp] = {"nginx": proc.pid, "server": srv.pid, "client": cli.pid}
        wait_http(comp, self.addr[comp])

    # -- rathole
    def rathole_pair(self, name, services, via_delay=False, ports=None):
        """A rathole server + client; `services` maps service name to the
        upstream address, `ports` optionally a service to its visitor port.
        Returns ({service: visitor address}, server proc, client proc)."""
        ctrl = free_port()
        visitors = {svc: (ports or {}).get(svc) or free_port() for svc in services}
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        server = f'[server]\nbind_addr = "127.0.0.1:{ctrl}"\ndefault_token = "{self.token}"\n'
        client_remote = f"127.0.0.1:{ctrl}"
        if via_delay:
            client_remote = self.start_delay(f"{name}-delay", client_remote)
        client = f'[client]\nremote_addr = "{client_remote}"\ndefault_token = "{self.token}"\n'
        for svc, target in services.items():
            server += f'\n[server.services.{svc}]\nbind_addr = "127.0.0.1:{visitors[svc]}"\n'
            client += f'\n[client.services.{svc}]\nlocal_addr = "{target}"\n'
        for role, text in (("server", server), ("client", client)):
            with open(os.path.join(d, f"{role}.toml"), "w") as f:
                f.write(text)
        srv = self.procs.start(f"{name}-server", [RATHOLE, "-s", os.path.join(d, "server.toml")],
                               ready=r"Listening at")
        cli = self.procs.start(f"{name}-client", [RATHOLE, "-c", os.path.join(d, "client.toml")],
                               ready=lambda t: t.count("Control channel established") >= len(services))
        addrs = {svc: f"127.0.0.1:{p}" for svc, p in visitors.items()}
        for svc, addr in addrs.items():
            if svc == "web":
                wait_http(name, addr)
        return addrs, srv, cli

    def start_rathole(self):
        log("rathole server + client")
        addrs, srv, cli = self.rathole_pair("rathole", {"web": self.upstream, "webtls": self.upstream_tls})
        self.addr["rathole"] = addrs["web"]
        self.tls["rathole"] = addrs["webtls"]
        self.hop["rathole"] = {"server": srv.pid, "client": cli.pid}

    # -- edge + sidecar
    def edge_config(self, path, environments, https=True, limits="", probe=None):
        """The edge's YAML. No limits unless `limits` (a `limits:` section's
        entries, then any top-level sections such as `redis:`) says: the
        per-cluster defaults would refuse a benchmark.
        `probe` adds a route whose host answers once this config is in
        force (see `Bench.reload_edge`)."""
        token_hash = subprocess.run([self.bin("edge-proxy"), "hash-token"], input=self.token + "\n",
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        envs = ", ".join(environments)
        tls = ""
        if https:
            tls = f"""tls:
  certificates:
    - {{ cert: {self.cert}, key: {self.key} }}
  redirect_http: false
"""
        tcp_ports = ""
        if "bench" in environments:
            tcp_ports = ("tcp_ports:\n  - { name: raw, listen: '127.0.0.1:0', target: bench/raw:8080, "
                         "allow: ['127.0.0.1'] }\n")
        listen = "{ http: 127.0.0.1:0, https: 127.0.0.1:0, tunnel: 127.0.0.1:0 }" if https else \
            "{ http: 127.0.0.1:0, tunnel: 127.0.0.1:0 }"
        with open(path, "w") as f:
            f.write(f"""listen: {listen}
{tls}preview: {{ domains: [preview.localhost] }}
clusters:
  - name: bench
    token_sha256: "{token_hash}"
    environments: [{envs}]
{tcp_ports}limits:
  cluster: {{}}
{limits}""")
            if "bench" in environments:
                f.write(policy_routes())
                if probe:
                    f.write(f"  - {{ name: probe, host: {probe}, target: bench/hello:8080 }}\n")
            if self.tunnel_tls:
                # The tunnel over TLS (--tunnel-tls): the dev certificate covers localhost.
                f.write(f"""tunnel:
  tls:
    certificates:
      - {{ cert: {self.cert}, key: {self.key} }}
""")

    def launch_edge(self, name, environments, https=True):
        conf = os.path.join(self.work, f"{name}.yaml")
        self.edge_config(conf, environments, https)
        proc = self.procs.start(name, [self.bin("edge-proxy"), "--config", conf], env={"RUST_LOG": "warn"},
                                ready=r"edge-proxy listening")
        line = re.search(r"edge-proxy listening .*", self.procs.log_text(name)).group(0)
        found = dict(re.findall(r"(\w+)=(\S+)", line))
        return proc, found

    def reload_edge(self, limits):
        """Rewrites the running edge's config with `limits` and waits until
        it is in force: a new probe host, answered only by the new config."""
        self.generation = getattr(self, "generation", 0) + 1
        probe = f"probe{self.generation}.bench.test"
        self.edge_config(os.path.join(self.work, "edge.yaml"), ["bench", "benchrtt", "benchws"], limits=limits,
                         probe=probe)
        os.kill(self.proc_edge.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                       f"Host: {probe}", f"http://{self.addr['edge']}/"], timeout=10, check=False)
            if out.strip() == "200":
                return
            time.sleep(0.1)
        raise HarnessError(f"the edge did not take the new limits within 20 s: {limits!r}")

    def start_edge(self):
        log("edge-proxy")
        self.proc_edge, found = self.launch_edge("edge", ["bench", "benchrtt", "benchws"])
        self.addr["edge"] = found["http"]
        self.tls["edge"] = found["https"]
        self.edge_tunnel = found["tunnel"]
        self.tcp_port = re.search(r" tcp:raw=(\S+)", self.procs.log_text("edge")).group(1)

    def launch_sidecar(self, name, tunnel, environment, edge=None, targets=""):
        """A sidecar for `environment` through the tunnel port `tunnel`
        (or at the `edge` URL given), offering the upstream as hello:8080
        plus `targets` (more YAML list entries)."""
        conf = os.path.join(self.work, f"{name}.yaml")
        with open(conf, "w") as f:
            if edge is None:
                edge = f"http://{tunnel}"
                if self.tunnel_tls:
                    ca = os.path.join(os.path.dirname(self.cert), "ca.pem")
                    edge = f"https://{tunnel}\ntls: {{ ca: {ca}, server_name: localhost }}"
            f.write(f"""edge: {edge}
token: {self.token}
environment: {environment}
targets:
  - {{ service: hello, port: 8080, address: {self.upstream} }}
{targets}""")
        return self.procs.start(name, [self.bin("sidecar"), "run", "--config", conf], env={"RUST_LOG": "warn"},
                                ready=r"^Forwarding")

    def start_sidecar(self):
        log("sidecar")
        raw = f"  - {{ service: raw, port: 8080, address: {self.upstream}, protocol: tcp }}\n"
        self.proc_sidecar = self.launch_sidecar("sidecar", self.edge_tunnel, "bench", targets=raw)
        self.hop["edge"] = {"edge": self.proc_edge.pid, "sidecar": self.proc_sidecar.pid}
        wait_http("edge", self.addr["edge"])

    def start_transports(self):
        """The WebSocket-transport sidecar and the TCP route's access
        client (the transport and tcp rows)."""
        if self.want("transport"):
            log("sidecar over a WebSocket (ws:// to the edge's HTTP port)")
            self.launch_sidecar("sidecar-ws", None, "benchws", edge=f"ws://{self.addr['edge']}")
            wait_http("edge (WebSocket transport)", self.addr["edge"], host=WS_HOST)
        if self.want("tcp"):
            log("access client for the TCP route (sidecar access tcp)")
            port = free_port()
            self.procs.start("access-tcp", [self.bin("sidecar"), "access", "tcp", TCP_HOST, "--listen",
                                            f"127.0.0.1:{port}", "--edge", f"http://{self.addr['edge']}"],
                             env={"RUST_LOG": "warn"}, ready=r"^listening ")
            self.tcp_route = f"127.0.0.1:{port}"
            wait_http("TCP route", self.tcp_route)

    def start_delay(self, name, to):
        self.procs.start(name, [self.bin("bench-delay"), "--to", to, "--delay-ms", "5"], ready=r"^listening ")
        return re.search(r"^listening (\S+)", self.procs.log_text(name), re.M).group(1)

    def dead(self, comp):
        """Why a comparator's processes are gone, or None while they run."""
        procs = {"direct": ["upstream"], "nginx": ["upstream", "nginx"],
                 "rathole": ["upstream", "rathole-server", "rathole-client"],
                 "nginx+rathole": ["upstream", "nginx-rathole", "nx-rathole-server", "nx-rathole-client"],
                 "edge": ["upstream", "edge", "sidecar"]}[comp]
        gone = []
        for name, proc in self.procs.running:
            if name in procs and proc.poll() is not None:
                rc = proc.returncode
                how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                tail = self.procs.log_text(name).strip().splitlines()[-3:]
                gone.append(f"{name} (pid {proc.pid}) {how}; log ends: {' | '.join(tail)}")
        return "; ".join(gone) or None

    def hop_pids(self, comp):
        pids = list(self.hop.get(comp, {}).values())
        for pid in list(pids):
            pids += proc_children(pid)  # nginx workers
        return pids

    # ------------------------------------------------------------ measurements

    def wrk(self, comp, conns, threads, extra=(), host=HOST, addr=None):
        argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{self.round_seconds}s", "-H", f"Host: {host}", *extra,
                f"http://{addr or self.addr[comp]}/"]
        pids = self.hop_pids(comp)
        user0, system0 = cpu_seconds(pids)
        out = run(argv, timeout=self.duration + 60)
        user1, system1 = cpu_seconds(pids)
        user = user1 - user0
        cpu = user + (system1 - system0)
        m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
        n = re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+)", out, re.M)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        requests = int(n.group(1)) if n else 0
        detail = {"requests": requests, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
                  "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                            map(int, sock.groups()))) if sock else {},
                  "cpu_s": round(cpu, 3)}
        if pids and requests:
            detail["cpu_us_per_request"] = round(cpu / requests * 1e6, 2)
            detail["user_cpu_us_per_request"] = round(user / requests * 1e6, 2)
        value = float(m.group(1)) if m else None
        if value is not None and requests and detail["non_2xx"] == requests:
            value = None  # nothing but errors is no number
        return value, detail

    def latency(self, comp, rate=None):
        paced = ["--rate", str(rate)] if rate else []
        out = run([self.bin("bench-latency"), "--addr", self.addr[comp], "--host", HOST,
                   "--duration", str(self.round_seconds), "--warmup", "0.5" if self.quick else "1", *paced],
                  timeout=self.duration + 60, check=False)
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise HarnessError(f"bench-latency said: {out[-1000:]}")
        return res

    def latency_beside(self, comp, flood_headers, rate):
        """A steady client's latency (bench-latency, one connection, no
        forwarding headers, STEADY_RATE requests/s: within the limit) while a flood of `rate` requests/s (h2load,
        HTTP/1.1, below what saturates the machine) goes to the same host with `flood_headers`.

        The flood arrives the same whether it is refused or served. h2load's
        `--rps` timer ticks every max(10 ms, 1/rps): a connection asked for
        more than 100 requests/s queues a tick's worth and sends each as soon
        as the previous one is answered, so fast refusals would arrive as
        back-to-back bursts where served requests spread over the tick.
        Here each connection sends one request per 10 ms tick (100/s), and
        the connections are opened over one tick (`--rate` per 1 ms), so
        their ticks are spread across it."""
        seconds = self.round_seconds + 2
        conns = max(1, rate // 100)
        argv = ["h2load", "--h1", f"-c{conns}", "-t1", "--rps=100", f"-n{conns * 100 * seconds}",
                f"--rate={max(1, conns // 10)}", "--rate-period=1ms",
                "-H", f":authority: {HOST}", *flood_headers, f"http://{self.addr[comp]}/"]
        flood = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1)  # the flood under way before the steady client measures
            steady = self.latency(comp, rate=STEADY_RATE)
            out, _ = flood.communicate(timeout=seconds + 60)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        fin = re.search(r"finished in ([\d.]+)(m?s)", out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        if not fin or not codes:
            raise HarnessError(f"h2load said: {out[-1000:]}")
        elapsed = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
        ok, refused = int(codes.group(1)), int(codes.group(3))
        return steady, {"offered_per_s": rate, "refused_per_s": round(refused / elapsed),
                        "admitted_per_s": round(ok / elapsed)}

    def curl_bulk(self, addr, host, max_time):
        out = run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-H", f"Host: {host}", "--max-time",
                   str(max_time), "-w", "%{http_code} %{size_download} %{speed_download} %{time_total}",
                   f"http://{addr}{BULK_PATH}"], timeout=max_time + 30, check=False)
        m = re.search(r"(\d{3}) (\d+) ([\d.]+) ([\d.]+)\s*$", out)
        if not m:
            raise HarnessError(f"curl said: {out[-500:]}")
        code, size, speed, secs = int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))
        return {"status": code, "bytes": size, "complete": size == self.bulk_bytes and code == 200,
                "mb_per_s": speed / 1e6, "seconds": secs}

    def repeated_bulk(self, addr, host, max_time):
        """Downloads BULK_PATH until `duration` has passed (at most 5 times,
        at least once); the median rate of the complete transfers."""
        runs = []
        start = time.monotonic()
        while not runs or (time.monotonic() - start < self.duration and len(runs) < 5):
            r = self.curl_bulk(addr, host, max_time=max_time)
            runs.append(r)
            if not r["complete"]:
                raise HarnessError(f"incomplete download: {r['bytes']} of {self.bulk_bytes} bytes, "
                                   f"status {r['status']} ({max_time} s limit)")
        rates = [r["mb_per_s"] for r in runs]
        return statistics.median(rates), {"runs_mb_per_s": [round(x, 1) for x in rates]}

    def bulk(self, comp):
        return self.repeated_bulk(self.addr[comp], HOST, max_time=120)

    def h2load(self, comp):
        argv = ["h2load", "-c4", "-m25", "-t1", "-D", str(self.round_seconds), "--warm-up-time", "1",
                "-H", f":authority: {HOST}", f"https://{self.tls[comp]}/"]
        out = run(argv, timeout=self.duration + 60, check=False)
        fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
        req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                        r"(\d+) errored, (\d+) timeout", out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        proto = re.search(r"Application protocol: (\S+)", out)
        if not fin or not req:
            raise HarnessError(f"h2load said: {out[-1500:]}")
        # "finished in" includes the warm-up; h2load's req/s and counts cover
        # only the measured period.
        secs = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
        done = int(req.group(3))
        ok2xx = int(codes.group(1)) if codes else int(req.group(4))
        detail = {"succeeded": int(req.group(4)), "failed": int(req.group(5)), "errored": int(req.group(6)),
                  "status_2xx": ok2xx, "non_2xx": sum(map(int, codes.groups()[1:])) if codes else None,
                  "protocol": proto.group(1) if proto else None, "seconds": secs}
        if proto and proto.group(1) != "h2":
            self.warnings.append(f"h2load {comp}: negotiated {proto.group(1)}, not h2")
        value = float(fin.group(3)) * ok2xx / done if done and ok2xx else None
        return value, detail

    def stalled(self, comp):
        """A steady client (bench-latency, one connection) while `stall_n`
        visitors stall a download of STALL_PATH (a 4 KiB receive buffer, only
        the status line read), beside the same client just before without
        them; and the middle hop's RSS growth per stalled visitor."""
        pids = self.hop_pids(comp)
        rss = lambda: sum(status_kib(pid, "VmRSS") or 0 for pid in pids)
        unloaded = self.latency(comp)
        rss0 = rss()
        host, port = self.addr[comp].rsplit(":", 1)
        socks = []
        try:
            for _ in range(self.stall_n):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(10)
                s.connect((host, int(port)))
                socks.append(s)
                s.sendall(f"GET {STALL_PATH} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                first = s.recv(12)
                if not first.startswith(b"HTTP/1.1 200"):
                    raise HarnessError(f"a download meant to stall got {first!r}")
            loaded = self.latency(comp)
            rss1 = rss()
        except OSError as e:
            raise HarnessError(f"stalling visitors: {e}")
        finally:
            for s in socks:
                s.close()
        detail = {"stalled": self.stall_n, "unloaded": unloaded, "loaded": loaded,
                  "failed": loaded.get("errors", 0)}
        if pids:
            detail["rss_kib_before"], detail["rss_kib_during"] = rss0, rss1
            detail["kib_per_stalled"] = round(max(rss1 - rss0, 0) / self.stall_n, 1)
        return (loaded["p99_us"] if loaded.get("requests") else None), detail

    def bulk_rtt(self, comp):
        """1 GiB (256 MiB quick) through a path with 10 ms RTT on the middle
        hop. Components are started for this row only."""
        max_time = 30 if self.quick else 120
        before = {id(p) for _, p in self.procs.running}
        try:
            if comp == "direct":
                addr, host = self.start_delay("delay-direct", self.upstream), HOST
            elif comp == "nginx":
                addr, host = f"127.0.0.1:{self.nginx_rtt_port}", HOST
            elif comp == "rathole":
                addrs, _, _ = self.rathole_pair("rathole-rtt", {"web": self.upstream}, via_delay=True)
                addr, host = addrs["web"], HOST
            elif comp == "nginx+rathole":
                self.rathole_pair("nx-rathole-rtt", {"web": self.upstream}, via_delay=True,
                                  ports={"web": self.nx_rathole_rtt_visitor})
                addr, host = f"127.0.0.1:{self.nx_rathole_rtt_port}", HOST
            else:
                delay = self.start_delay("delay-edge", self.edge_tunnel)
                self.launch_sidecar("sidecar-rtt", delay, "benchrtt")
                wait_http("edge (10 ms RTT)", self.addr["edge"], HOST_RTT)
                addr, host = self.addr["edge"], HOST_RTT
            return self.repeated_bulk(addr, host, max_time=max_time)
        finally:  # what this row started
            for _, p in reversed([x for x in self.procs.running if id(x[1]) not in before]):
                self.procs.stop(p)

    def peak_rss(self, comp):
        parts = {}
        for label, pid in self.hop.get(comp, {}).items():
            parts[label] = status_kib(pid, "VmHWM") or 0
            for i, kid in enumerate(proc_children(pid)):
                parts[f"{label} worker {i + 1}"] = status_kib(kid, "VmHWM") or 0
        return parts

    def scale(self):
        envs = [f"s{i}" for i in range(self.scale_n)]
        proc, found = self.launch_edge("edge-scale", envs, https=False)
        try:
            out = run([self.bin("bench-scale"), "run", "--edge-pid", str(proc.pid), "--http", found["http"],
                       "--tunnel", found["tunnel"], "--token", self.token, "--env-prefix", "s",
                       "--sidecars", str(self.scale_n), "--connections", str(self.scale_m),
                       "--timeout", "30" if self.quick else "120", "--settle", "1" if self.quick else "2"]
                      + (["--tunnel-ca", os.path.join(os.path.dirname(self.cert), "ca.pem")] if self.tunnel_tls else []),
                      timeout=900, check=False)
        finally:
            edge_log = self.procs.log_text("edge-scale")
            self.procs.stop(proc)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise HarnessError(f"bench-scale said:\n{out[-3000:]}")
        for ln in out.splitlines():
            if not ln.startswith("{"):
                note(ln)
        res = json.loads(lines[-1])
        errors = [ln for ln in edge_log.splitlines() if " ERROR " in ln or " WARN " in ln]
        res["edge_log_warnings"] = len(errors)
        res["edge_log_sample"] = errors[:5]
        return res


# ------------------------------------------------------------------ rows

def cpu_medians(samples):
    """Each load's median CPU of edge + sidecar per request (µs) over its
    rounds; None where /proc gave none."""
    return {k: round(statistics.median(v), 2) if v else None for k, v in samples.items()}


def lost_pct(value, base):
    """How much lower `value` is than `base`, in % (one decimal); None
    without a base."""
    return round((1 - value / base) * 100, 1) if base else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def fmt(v, unit):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if unit in ("req/s", "conn/s"):
        return f"{v:,.0f}"
    if unit == "MB/s":
        return f"{v:,.0f}"
    if unit in ("µs", "KiB", "MiB"):
        return f"{v:,.1f}"
    return f"{v:g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few seconds per row, small scale rows (CI)")
    ap.add_argument("--sidecars", type=int, help="scale row: sidecars (default 1000, quick 20)")
    ap.add_argument("--connections", type=int, help="scale row: open connections (default 10000, quick 200)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (configs, logs)")
    ap.add_argument("--tunnel-tls", action="store_true",
                    help="run the edge's tunnel (sidecar to edge) over TLS; run once with and once without "
                         "to compare")
    ap.add_argument("--only", metavar="ROWS", help="comma-separated subset: " + ",".join(ROW_KEYS))
    args = ap.parse_args()
    unknown = set(args.only.split(",")) - set(ROW_KEYS) if args.only else set()
    if unknown:
        ap.error(f"--only: unknown rows {', '.join(sorted(unknown))} (known: {', '.join(ROW_KEYS)})")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            pass

    work = tempfile.mkdtemp(prefix="bench.")
    try:
        b = Bench(args, work)
    except HarnessError as e:
        shutil.rmtree(work, ignore_errors=True)
        sys.stderr.write(f"bench: {e}\n")
        return 1

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (background job)

    started = time.monotonic()
    rows = []
    code = 0
    try:
        b.setup()
        rows = run_rows(b)
    except HarnessError as e:
        sys.stderr.write(f"bench: {e}\n")
        code = 1
    except KeyboardInterrupt:
        sys.stderr.write("\nbench: interrupted\n")
        code = 130
    finally:
        b.procs.stop_all()
        if args.keep or code == 1:
            sys.stderr.write(f"bench: configs and logs kept in {work}\n")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if code:
        return code
    missing = report(b, rows, time.monotonic() - started)
    # The harness works if every comparator was measured and the edge gave
    # numbers; an edge cell lost to the edge's own errors is a finding
    # (a warning, "holds: no"), not a broken harness.
    comparators = [m for m in missing if not m.endswith(" / edge")]
    edge_rows = [r for r in rows if "edge" in r["expected"]]
    edge_missing = [m for m in missing if m.endswith(" / edge")]
    if comparators:
        sys.stderr.write("bench: no number for: " + "; ".join(comparators) + "\n")
        return 1
    if edge_rows and len(edge_missing) == len(edge_rows):
        sys.stderr.write("bench: no number at all for the edge\n")
        return 1
    return 0


def median_round(measured, better):
    """The median of a comparator's rounds (value and its details); a round
    without a number counts as the worst."""
    valid = sorted((r for r in measured if r[0] is not None), key=lambda r: r[0], reverse=(better == "higher"))
    if len(valid) < len(measured):
        failed = next(r for r in measured if r[0] is None)
        valid += [failed] * (len(measured) - len(valid))
    return valid[len(valid) // 2]


def run_rows(b):
    rows = []
    only_edge = {c: None for c in COMPARATORS}

    def add(key, name, unit, values, details=None, must=None, aim=None, better="higher", expected=COMPARATORS,
            seconds=0.0):
        rows.append({"key": key, "row": name, "unit": unit, "better": better, "values": values,
                     "details": details or {}, "must": must, "aim": aim, "expected": list(expected),
                     "seconds": round(seconds, 1)})
        return rows[-1]

    def row(key, name, unit, fn, rounds=1, better="higher", **kw):
        """Measures `fn(comparator) -> (value, details)` for every comparator,
        `rounds` times in turn; each comparator's median round counts."""
        log(name)
        t0 = time.monotonic()
        runs = {comp: [] for comp in COMPARATORS}
        for _ in range(rounds):
            for comp in COMPARATORS:
                # A failed measurement costs its cell, not the run (the
                # missing number still fails it at the end).
                dead = b.dead(comp)
                try:
                    if dead:
                        raise HarnessError(dead)
                    runs[comp].append(fn(comp))
                except HarnessError as e:
                    dead = b.dead(comp)
                    msg = f"{e}" + (f" ({dead})" if dead and dead not in str(e) else "")
                    runs[comp].append((None, {"error": msg}))
                    b.warnings.append(f"{name}, {comp}: {msg}")
        values, details = {}, {}
        for comp, measured in runs.items():
            values[comp], details[comp] = median_round(measured, better)
            if rounds > 1:
                details[comp]["rounds"] = [v for v, _ in measured]
            note(f"{comp:13} {fmt(values[comp], unit)} {unit}"
                 + (f"  (rounds: {', '.join(fmt(v, unit) for v, _ in measured)})" if rounds > 1 else ""))
        return add(key, name, unit, values, details, seconds=time.monotonic() - t0, better=better, **kw)

    log(f"warm-up ({'1' if b.quick else '2'} s each)")
    for comp in COMPARATORS:
        if b.dead(comp):
            raise HarnessError(b.dead(comp))
        run(["wrk", "-t2", "-c64", f"-d{1 if b.quick else 2}s", "-H", f"Host: {HOST}", f"http://{b.addr[comp]}/"],
            timeout=60)

    if b.want("rps_c64"):
        r = row("rps_c64", "requests/s, 64 connections, keep-alive", "req/s",
                lambda c: b.wrk(c, 64, 2), rounds=b.rounds, must="≥ 1.0 × nginx+rathole", aim="≥ 1.0 × rathole")
        add("cpu_per_request", "CPU of the middle hop per request (µs, 64-conn row)", "µs",
            {c: r["details"][c].get("cpu_us_per_request") for c in COMPARATORS},
            better="lower", expected=MIDDLE_HOPS)
        add("user_cpu_per_request", "… of which in user space (µs)", "µs",
            {c: r["details"][c].get("user_cpu_us_per_request") for c in COMPARATORS},
            better="lower", expected=MIDDLE_HOPS)
    if b.want("rps_c1"):
        row("rps_c1", "requests/s, 1 connection", "req/s",
            lambda c: b.wrk(c, 1, 1), rounds=b.rounds, must="≥ 1.0 × nginx+rathole", aim="≥ 1.0 × rathole")
    if b.want("latency"):
        r = row("latency_p50", "latency p50, 1 connection (µs)", "µs",
                lambda c: (lambda res: (res["p50_us"] if res["requests"] else None, res))(b.latency(c)),
                rounds=b.rounds, better="lower")
        add("latency_p99", "latency p99, 1 connection (µs)", "µs",
            {c: (d["p99_us"] if d.get("requests") else None) for c, d in r["details"].items()}, better="lower")
        p50, direct = r["values"], r["values"]["direct"]
        add("latency_added", "added p50 latency over direct, 1 connection (µs)", "µs",
            {c: (p50[c] - direct if None not in (p50[c], direct) and c != "direct" else None) for c in COMPARATORS},
            must="≤ nginx+rathole's", aim="≤ rathole's", better="lower", expected=MIDDLE_HOPS)
    if b.want("conn_rate"):
        row("conn_rate", "new connections/s (Connection: close, 16 conns)", "conn/s",
            lambda c: b.wrk(c, 16, 2, ("-H", "Connection: close")), rounds=b.rounds, must="≥ 1.0 × rathole",
            aim="≥ 0.8 × nginx")
    size = "1 GiB" if b.bulk_bytes == 1024 * MIB else f"{b.bulk_bytes // MIB} MiB"
    if b.want("bulk"):
        row("bulk", f"{size} download (MB/s)", "MB/s", b.bulk, must="≥ 1.0 × rathole", aim="≥ 1.0 × nginx")
    if b.want("h2"):
        row("h2_rps", "HTTP/2 over TLS requests/s (h2load, 4 conns × 25 streams)", "req/s", b.h2load,
            rounds=b.rounds, must="≥ 1.0 × nginx+rathole", aim="≥ 0.8 × nginx")

    if b.want("stalled"):
        r = row("stalled_p99", f"latency p99 while {b.stall_n} visitors stall a download (µs)", "µs", b.stalled,
                better="lower", must="0 failed, ≤ 2 × unloaded p99", aim="≤ 1.2 × unloaded p99")
        d = r["details"]
        add("stalled_unloaded_p99", "… the same client without them, just before (µs)", "µs",
            {c: d[c].get("unloaded", {}).get("p99_us") for c in COMPARATORS}, better="lower")
        add("stalled_failed", "… its failed requests while they stall", "count",
            {c: d[c].get("failed") for c in COMPARATORS}, better="lower")
        add("stalled_rss", "RSS of the middle hop per stalled visitor (KiB)", "KiB",
            {c: d[c].get("kib_per_stalled") for c in COMPARATORS}, must="≤ 1 MiB", aim="≤ 256 KiB",
            better="lower", expected=MIDDLE_HOPS)

    # Peak memory of the middle hops over the rows above (before the RTT row
    # starts extra processes).
    rss = {c: b.peak_rss(c) for c in COMPARATORS if b.hop.get(c)}
    add("peak_rss", "peak RSS of the middle hop (MiB, all its processes)", "MiB",
        {c: (sum(rss[c].values()) / 1024 if c in rss else None) for c in COMPARATORS},
        {c: {k: round(v / 1024, 1) for k, v in parts.items()} for c, parts in rss.items()},
        better="lower", expected=MIDDLE_HOPS)

    if b.want("bulk_rtt"):
        row("bulk_rtt", f"{size} download, 10 ms RTT on the middle hop (MB/s)", "MB/s", b.bulk_rtt,
            must="≥ 500 MB/s", aim="≥ 1 GB/s")

    if b.want("scale"):
        log(f"scale: {b.scale_n} sidecars, {b.scale_m} open connections through one edge")
        t0 = time.monotonic()
        try:
            s = b.scale()
        except HarnessError as e:
            b.warnings.append(f"scale: {e}")
            s = {"kib_per_tunnel": None, "kib_per_connection": None, "connection_failures": None,
                 "tunnels_dropped": None, "sidecars": b.scale_n, "sidecars_connected": None,
                 "connections": b.scale_m, "error": str(e)}
        secs = time.monotonic() - t0
        failed = bool(s.get("error"))
        if not failed:
            note(f"per tunnel {fmt(s['kib_per_tunnel'], 'KiB')} KiB, per connection "
                 f"{fmt(s['kib_per_connection'], 'KiB')} KiB, {s['connection_failures']} failed connections, "
                 f"{s['tunnels_dropped']} dropped tunnels, {s['sidecars'] - s['sidecars_connected']} never connected")
        add("mem_tunnel", "memory per idle tunnel at the edge (KiB)", "KiB",
            {**only_edge, "edge": s["kib_per_tunnel"]}, {"edge": s}, must="≤ 64 KiB", aim="≤ 16 KiB",
            better="lower", expected=["edge"], seconds=secs)
        add("mem_connection", "memory per open proxied connection at the edge (KiB)", "KiB",
            {**only_edge, "edge": s["kib_per_connection"]}, must="≤ 64 KiB", aim="≤ 32 KiB", better="lower",
            expected=["edge"])
        dropped = None if failed else \
            s["connection_failures"] + s["tunnels_dropped"] + (s["sidecars"] - s["sidecars_connected"])
        add("scale", f"scale: {s['sidecars']:,} sidecars + {s['connections']:,} open connections, "
            "failed or dropped", "count", {**only_edge, "edge": dropped}, {"scale": s},
            must="1k sidecars + 10k conns, none dropped", aim="10k sidecars", better="lower", expected=["edge"])
    if b.want("routes"):
        log("route lookup with 10,000 custom-domain rules")
        t0 = time.monotonic()
        out = run([b.bin("bench-routes"), "10000"], timeout=120)
        for ln in out.splitlines():
            if not ln.startswith("{"):
                note(ln.strip())
        lookup = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
        add("routes", "route lookup, 10,000 rules: slowest case (ns)", "ns",
            {**only_edge, "edge": lookup["slowest_lookup_ns"]}, {"edge": lookup}, better="lower",
            expected=["edge"], seconds=time.monotonic() - t0)
    if b.want("policy") or b.want("wasm"):
        wasm = b.want("wasm") and os.environ.get("HEADER_POLICY_WASM")
        log("header policy: a route without, with the native policy" + (", with the wasm filter" if wasm else "")
            + " (64 connections)")
        t0 = time.monotonic()
        rps = {PLAIN_HOST: [], POLICY_HOST: []}
        if wasm:
            rps[WASM_HOST] = []
        # CPU of edge + sidecar per request: steadier than requests/s on a
        # shared machine, stated beside it.
        cpu = {h: [] for h in rps}
        for _ in range(b.feature_rounds):
            for host in rps:
                value, detail = b.wrk("edge", 64, 2, host=host)
                rps[host].append(value or 0.0)
                if "cpu_us_per_request" in detail:
                    cpu[host].append(detail["cpu_us_per_request"])
        median = {h: statistics.median(v) for h, v in rps.items()}
        cpu_median = cpu_medians(cpu)
        without = median[PLAIN_HOST]

        def lost(host):
            return lost_pct(median[host], without)

        def said(host):
            return f"{median[host]:,.0f} req/s, {cpu_median[host]} µs CPU each"
        note(f"without {said(PLAIN_HOST)}; native policy {said(POLICY_HOST)}: {lost(POLICY_HOST)} % lost"
             + (f"; wasm filter {said(WASM_HOST)}: {lost(WASM_HOST)} % lost" if wasm else ""))
        seconds = time.monotonic() - t0
        if b.want("policy"):
            add("policy", "header policy, native: requests/s lost (%, 64 conns)", "%",
                {**only_edge, "edge": lost(POLICY_HOST)},
                {"edge": {"rps_without": rps[PLAIN_HOST], "rps_with": rps[POLICY_HOST],
                          "cpu_us_without": cpu_median[PLAIN_HOST], "cpu_us_with": cpu_median[POLICY_HOST]}},
                must="≤ 3% rps", aim="≤ 1%", better="lower", expected=["edge"], seconds=seconds)
        if wasm:
            add("wasm", "header policy, wasm filter in the edge: requests/s lost (%, 64 conns)", "%",
                {**only_edge, "edge": lost(WASM_HOST)},
                {"edge": {"rps_without": rps[PLAIN_HOST], "rps_with": rps[WASM_HOST],
                          "cpu_us_without": cpu_median[PLAIN_HOST], "cpu_us_with": cpu_median[WASM_HOST]}},
                must="≤ 10% rps", aim="≤ 3%", better="lower", expected=["edge"], seconds=seconds)
    if b.want("auth"):
        log("visitor auth: a public route, a route needing an identity: bearer JWT (ES256, RS256), "
            "session cookie (64 connections)")
        t0 = time.monotonic()
        tokens = {alg: run([b.bin("bench-token"), "--alg", alg, "--key", os.path.join(JWT_KEYS, key),
                            "--issuer", JWT_ISSUER, "--audience", JWT_AUDIENCE], timeout=30).strip()
                  for alg, key in (("ES256", "ec.key"), ("RS256", "rsa.key"))}
        loads = {"public": (PLAIN_HOST, ())}
        for alg, t in tokens.items():
            loads[alg] = (JWT_HOST, ("-H", f"Authorization: Bearer {t}"))
        loads["cookie"] = (JWT_HOST, ("-H", f"Cookie: {session_cookie(b.bin('bench-token'))}"))
        rps = {name: [] for name in loads}
        for _ in range(b.rounds):
            for name, (host, extra) in loads.items():
                value, detail = b.wrk("edge", 64, 2, extra=extra, host=host)
                if detail["non_2xx"]:
                    raise HarnessError(f"auth row, {name}: {detail['non_2xx']} refused requests")
                rps[name].append(value or 0.0)
        median = {n: statistics.median(v) for n, v in rps.items()}
        public = median["public"]
        for name in [*tokens, "cookie"]:
            cost = lost_pct(median[name], public)
            what = "session cookie" if name == "cookie" else f"bearer {name} (cached)"
            note(f"public {public:,.0f} req/s, {what} {median[name]:,.0f} req/s: {cost} %")
            add(f"auth_{name.lower()}", f"visitor auth, {what}: requests/s lost (%, 64 conns)", "%",
                {**only_edge, "edge": cost}, {"edge": {"rps_public": rps["public"], "rps_with": rps[name]}},
                must="≤ 5% rps", aim="≤ 1%", better="lower", expected=["edge"],
                seconds=time.monotonic() - t0)
    if b.want("limits"):
        log("limits: none, a per-address rate and in-flight cap that never trigger (in memory, in Redis), a per-identity one "
            "(the edge's config reloaded between loads; 64 connections)")
        t0 = time.monotonic()
        token = run([b.bin("bench-token"), "--alg", "ES256", "--key", os.path.join(JWT_KEYS, "ec.key"),
                     "--issuer", JWT_ISSUER, "--audience", JWT_AUDIENCE], timeout=30).strip()
        bearer = ("-H", f"Authorization: Bearer {token}")
        never = "{ rate: 100000000, period: 1s, in_flight: 100000 }"
        loads = {
            # name: (limits, host, extra)
            "none": ("", PLAIN_HOST, ()),
            "ip": (f"  client_ip: {never}\n", PLAIN_HOST, ()),
            "identity_none": ("", JWT_HOST, bearer),
            "identity": (f"  identity: {never}\n", JWT_HOST, bearer),
        }
        if shutil.which("redis-server"):
            # The same per-address limit, counted in a local Redis (one
            # script call per request, on a Unix socket).
            socket_path = os.path.join(b.work, "redis.sock")
            b.procs.start("redis", ["redis-server", "--port", "0", "--unixsocket", socket_path, "--save", "",
                                    "--appendonly", "no"], ready=r"ready to accept connections")
            redis = f"redis: {{ url: 'unix://{socket_path}', budget: 50ms }}\n"
            loads["redis"] = (f"  client_ip: {never}\n{redis}", PLAIN_HOST, ())
        rps = {name: [] for name in loads}
        # With the CPU of edge + sidecar per request (steadier than
        # requests/s here), as the policy row.
        cpu = {name: [] for name in loads}
        for _ in range(b.feature_rounds):
            for name, (limits, host, extra) in loads.items():
                b.reload_edge(limits)
                value, detail = b.wrk("edge", 64, 2, extra=extra, host=host)
                if detail["non_2xx"]:
                    raise HarnessError(f"limits row, {name}: {detail['non_2xx']} refused requests")
                rps[name].append(value or 0.0)
                if "cpu_us_per_request" in detail:
                    cpu[name].append(detail["cpu_us_per_request"])
        b.reload_edge("")
        median = {n: statistics.median(v) for n, v in rps.items()}
        cpu_median = cpu_medians(cpu)
        if "redis" in median and median["redis"] and median["none"]:
            # What a request pays for Redis: connection time per request
            # (64 connections / requests/s), against the same limit kept in
            # memory.
            added_us = (64 / median["redis"] - 64 / median["ip"]) * 1e6
            cost = lost_pct(median["redis"], median["none"])
            note(f"without {median['none']:,.0f} req/s, per-address limit in redis {median['redis']:,.0f} req/s: "
                 f"{cost} %, {added_us:,.0f} µs more per request than in memory")
            add("limits_redis", "limit per client IP counted in Redis (Unix socket), never triggered: "
                "requests/s lost (%, 64 conns)", "%", {**only_edge, "edge": cost},
                {"edge": {"rps_without": rps["none"], "rps_with": rps["redis"],
                          "added_us_per_request_vs_memory": round(added_us, 1)}},
                must="its cost stated", better="lower", expected=["edge"], seconds=time.monotonic() - t0)
        # One client over its limit beside one within it: what the refused
        # flood costs the other client, against the same flood served.
        log("limits: a client flooding past its per-address limit beside a steady client")
        trusted = "forwarding: { trusted_proxies: [127.0.0.1] }\n"
        flood = ("-H", "X-Forwarded-For: 203.0.113.9")
        # Offered at a fixed rate, the same refused or served: what the
        # refusals cost the other client, not how much more a cheaper
        # answer lets a client send.
        rate = 4000 if b.quick else 16000
        limited = f"  client_ip: {{ rate: 1000, period: 1s }}\n{trusted}"
        # A p99 of a few seconds at 500 requests/s is its 15th worst
        # request, and this machine's neighbours move it by milliseconds:
        # the three cases alternate, round after round, and each is the
        # median of its rounds.
        rounds = {"alone": [], "beside_refused": [], "beside_served": []}
        floods = {"refused": [], "served": []}
        for _ in range(1 if b.quick else 5):
            b.reload_edge("")
            rounds["alone"].append(b.latency("edge", rate=STEADY_RATE))
            b.reload_edge(limited)
            steady, flood_seen = b.latency_beside("edge", flood, rate)
            rounds["beside_refused"].append(steady)
            floods["refused"].append(flood_seen)
            b.reload_edge(trusted)
            steady, flood_seen = b.latency_beside("edge", flood, rate)
            rounds["beside_served"].append(steady)
            floods["served"].append(flood_seen)
        b.reload_edge("")

        def median_of(results, key):
            values = [r[key] for r in results if r.get(key) is not None]
            return round(statistics.median(values), 1) if values else None

        p99 = {case: median_of(rs, "p99_us") for case, rs in rounds.items()}
        p50 = {case: median_of(rs, "p50_us") for case, rs in rounds.items()}
        refused_flood, served_flood = (
            {k: round(statistics.median(f[k] for f in fs)) for k in fs[0]}
            for fs in (floods["refused"], floods["served"]))
        steady_errors = sum(r.get("errors", 0) for r in rounds["beside_refused"])
        note(f"steady client p99 (median of {len(rounds['alone'])} alternating rounds) alone {p99['alone']} µs; "
             f"beside a flood of {rate:,} requests/s refused at {refused_flood['refused_per_s']:,}/s (admitted "
             f"{refused_flood['admitted_per_s']:,}/s of a 1,000/s limit) {p99['beside_refused']} µs; beside the "
             f"same flood served ({served_flood['admitted_per_s']:,}/s) {p99['beside_served']} µs; "
             f"each round's p99: " + "; ".join(
                 f"{case} " + ", ".join(str(round(r.get('p99_us') or 0)) for r in rs) for case, rs in rounds.items()))
        add("limits_flood", "a steady client's p99 beside another client refused past its limit (µs)", "µs",
            {**only_edge, "edge": p99["beside_refused"]},
            {"edge": {"p99_us": p99, "p50_us": p50,
                      "p99_us_per_round": {case: [r.get("p99_us") for r in rs] for case, rs in rounds.items()},
                      "refused_flood": refused_flood, "served_flood": served_flood,
                      "steady_errors": steady_errors}},
            must="≤ 1.1 × its p99 beside the flood served, none refused", better="lower", expected=["edge"],
            seconds=time.monotonic() - t0)
        for name, base, what in (("ip", "none", "per client IP, rate + in-flight cap"),
                                 ("identity", "identity_none", "per identity (bearer ES256), rate + in-flight cap")):
            cost = lost_pct(median[name], median[base])
            note(f"without {median[base]:,.0f} req/s, {cpu_median[base]} µs CPU each; limit {what} "
                 f"{median[name]:,.0f} req/s, {cpu_median[name]} µs CPU each: {cost} %")
            add(f"limits_{name}", f"limit {what}, never triggered: requests/s lost (%, 64 conns)", "%",
                {**only_edge, "edge": cost}, {"edge": {"rps_without": rps[base], "rps_with": rps[name],
                                                       "cpu_us_without": cpu_median[base],
                                                       "cpu_us_with": cpu_median[name]}},
                must="≤ 3% rps", aim="≤ 1%", better="lower", expected=["edge"], seconds=time.monotonic() - t0)
    if b.want("transport"):
        log("the tunnel over a WebSocket beside gRPC: requests/s (64 connections) and bulk, alternating")
        t0 = time.monotonic()
        rps = {HOST: [], WS_HOST: []}
        mbs = {HOST: [], WS_HOST: []}
        for _ in range(b.rounds):
            for host in rps:
                value, _ = b.wrk("edge", 64, 2, host=host)
                rps[host].append(value or 0.0)
        for host in mbs:
            value, _ = b.repeated_bulk(b.addr["edge"], host, max_time=120)
            mbs[host].append(value)
        for key, what, unit, got in (("ws_rps", "requests/s, 64 connections", "req/s", rps),
                                     ("ws_bulk", f"{size} download (MB/s)", "MB/s", mbs)):
            grpc, ws = statistics.median(got[HOST]), statistics.median(got[WS_HOST])
            lower = lost_pct(ws, grpc)
            note(f"{what}: gRPC {fmt(grpc, unit)}, WebSocket {fmt(ws, unit)}: {lower} % lower")
            add(key, f"tunnel over a WebSocket, {what}: lost vs the gRPC tunnel (%)", "%",
                {**only_edge, "edge": lower},
                {"edge": {"grpc": [round(v, 1) for v in got[HOST]], "websocket": [round(v, 1) for v in got[WS_HOST]]}},
                must="its cost stated", better="lower", expected=["edge"], seconds=time.monotonic() - t0)
    if b.want("tcp"):
        # rathole carries the same port as a TCP tunnel, as the edge's TCP
        # port does (the same work); the access client adds a hop on the
        # visitor's machine and a WebSocket.
        tcp_addr = {"rathole": b.addr["rathole"], "port": b.tcp_port, "access": b.tcp_route}
        pair = {c: None for c in COMPARATORS}
        log("the edge's TCP port and a TCP route through access tcp, beside rathole: requests/s (64 connections) "
            "and bulk, alternating")
        t0 = time.monotonic()
        rps = {c: [] for c in tcp_addr}
        cpu = {c: [] for c in tcp_addr}
        mbs = {}
        for _ in range(b.rounds):
            for way, addr in tcp_addr.items():
                value, detail = b.wrk("rathole" if way == "rathole" else "edge", 64, 2, addr=addr)
                rps[way].append(value or 0.0)
                cpu[way].append(detail.get("cpu_us_per_request"))
        for way, addr in tcp_addr.items():
            mbs[way], _ = b.repeated_bulk(addr, HOST, max_time=120)
        med = {c: statistics.median(v) for c, v in rps.items()}
        note(f"TCP port {med['port']:,.0f} req/s, through access tcp {med['access']:,.0f} req/s, rathole "
             f"{med['rathole']:,.0f} req/s; bulk {mbs['port']:,.0f} MB/s, through access tcp {mbs['access']:,.0f} "
             f"MB/s, rathole {mbs['rathole']:,.0f} MB/s")
        rounds = {c: {"rounds": [round(v) for v in rps[c]]} for c in rps}
        add("tcp_rps", "TCP port on the edge (tcp_ports, 64 connections) requests/s", "req/s",
            {**pair, "rathole": med["rathole"], "edge": med["port"]},
            {"rathole": rounds["rathole"], "edge": rounds["port"]}, must="≥ 1.0 × rathole",
            expected=["rathole", "edge"], seconds=time.monotonic() - t0)
        add("tcp_access_rps", "… a TCP route through access tcp (a local hop and a WebSocket more) requests/s",
            "req/s", {**pair, "rathole": med["rathole"], "edge": med["access"]},
            {"rathole": rounds["rathole"], "edge": rounds["access"]}, must="its cost stated",
            expected=["rathole", "edge"])
        # The server side's work: edge + sidecar against rathole's server +
        # client (the access client runs on the visitor's machine).
        cpu_med = {c: statistics.median([v for v in cpu[c] if v is not None] or [0]) or None for c in cpu}
        add("tcp_cpu", "… CPU of the tunnel's hops per request through the TCP port (µs: edge + sidecar; "
            "rathole server + client)", "µs", {**pair, "rathole": cpu_med["rathole"], "edge": cpu_med["port"]},
            better="lower", expected=["rathole", "edge"])
        add("tcp_access_cpu", "… the same through access tcp (µs: edge + sidecar)", "µs",
            {**pair, "rathole": cpu_med["rathole"], "edge": cpu_med["access"]},
            better="lower", expected=["rathole", "edge"])
        add("tcp_bulk", f"TCP port on the edge, {size} download (MB/s)", "MB/s",
            {**pair, "rathole": mbs["rathole"], "edge": mbs["port"]}, must="≥ 1.0 × rathole",
            expected=["rathole", "edge"])
        add("tcp_access_bulk", f"… through access tcp, {size} download (MB/s)", "MB/s",
            {**pair, "rathole": mbs["rathole"], "edge": mbs["access"]}, must="its cost stated",
            expected=["rathole", "edge"])
    return rows


def must_comparator(must):
    """The comparator a "must" measures the edge against, and how:
    ("≥", factor, comparator) for "≥ 1.0 × nginx+rathole", ("≤", 1.0,
    comparator) for "≤ nginx+rathole's"; None for an absolute target."""
    m = re.fullmatch(r"≥ ([\d.]+) × (\S+)", must or "")
    if m and m.group(2) in COMPARATORS:
        return "≥", float(m.group(1)), m.group(2)
    m = re.fullmatch(r"≤ (\S+)'s", must or "")
    if m and m.group(1) in COMPARATORS:
        return "≤", 1.0, m.group(1)
    return None


def judge(r, quick):
    """Whether the edge meets the row's "must": "yes", "no" or "n/a". A
    must against a comparator is read from its text, so the table's "must"
    column is exactly what was checked."""
    v = r["values"]
    e = v.get("edge")
    key = r["key"]
    if e is None or not r["must"]:
        return "n/a"
    against = must_comparator(r["must"])
    if against:
        op, factor, comp = against
        if v.get(comp) is None:
            return "n/a"
        return "yes" if (e >= factor * v[comp] if op == "≥" else e <= factor * v[comp]) else "no"
    if key == "bulk_rtt":
        return "yes" if e >= 500 else "no"
    if key in ("mem_tunnel", "mem_connection"):
        return "yes" if e <= 64 else "no"
    if key == "stalled_p99":
        d = r["details"]["edge"]
        unloaded = d.get("unloaded", {}).get("p99_us")
        return "n/a" if not unloaded else ("yes" if d.get("failed") == 0 and e <= 2 * unloaded else "no")
    if key == "stalled_rss":
        return "yes" if e <= 1024 else "no"
    if key == "policy":
        return "yes" if e <= 3 else "no"
    if key == "wasm":
        return "yes" if e <= 10 else "no"
    if key.startswith("auth_"):
        return "yes" if e <= 5 else "no"
    if key in ("limits_ip", "limits_identity"):
        return "yes" if e <= 3 else "no"
    if key == "limits_flood":
        d = r["details"]["edge"]
        served = d["p99_us"].get("beside_served")
        if not served or not d["refused_flood"]["refused_per_s"]:
            return "n/a"
        return "yes" if d["steady_errors"] == 0 and e <= 1.1 * served else "no"
    if key == "scale":
        d = r["details"]["scale"]
        if e > 0:
            return "no"
        if d["sidecars"] < 1000 or d["connections"] < 10000:
            return "n/a (smaller run)" if quick else "no (smaller run)"
        return "yes"
    return "n/a"


def report(b, rows, total_secs):
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL).stdout.decode().strip() or "unknown"
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode().strip()
    if dirty:
        commit += "+dirty"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    kernel = os.uname().release
    cores = os.cpu_count()
    scale_row = next((r for r in rows if r["key"] == "scale"), None)
    missing = []
    for r in rows:
        r["ratios"] = {f"edge/{c}": ratio(r["values"].get("edge"), r["values"].get(c))
                       for c in COMPARATORS if c != "edge"}
        r["holds"] = judge(r, b.quick)
        for c in r["expected"]:
            if r["values"].get(c) is None:
                missing.append(f"{r['row']} / {c}")
        # warnings from errors seen during the row
        for c, det in (r.get("details") or {}).items():
            if not isinstance(det, dict):
                continue
            errs = det.get("non_2xx") or 0
            errs += sum((det.get("socket_errors") or {}).values())
            errs += (det.get("errors") or 0) + (det.get("failed") or 0) + (det.get("errored") or 0)
            if errs:
                shown = {k: det[k] for k in ("non_2xx", "socket_errors", "errors", "first_error", "failed",
                                             "errored") if det.get(k)}
                b.warnings.append(f"{r['row']}, {c}: {errs} errors {json.dumps(shown)}")
    b.warnings += [f"no number: {m}" for m in missing]
    if scale_row:
        s = scale_row["details"]["scale"]
        if s["connection_failures"] or s["tunnels_dropped"]:
            b.warnings.append(f"scale: outcomes {s['outcomes']}, samples {s['failure_samples']}, "
                              f"sidecars at end: {s['sidecar_status_end']}")
        if s.get("edge_log_warnings"):
            b.warnings.append(f"scale: edge logged {s['edge_log_warnings']} warnings/errors, e.g. {s['edge_log_sample'][:2]}")

    header = (f"Benchmark {date}, commit {commit}, {cores} cores, kernel {kernel}, "
              f"{'quick' if b.quick else 'full'} run ({b.duration} s per measurement"
              f"{f', load rows in {b.rounds} alternating rounds of {b.round_seconds} s, median' if b.rounds > 1 else ''})"
              f", total {total_secs:.0f} s")
    footnotes = []  # texts, in the order of their marks

    def mark(text):
        if text not in footnotes:
            footnotes.append(text)
        return SUPERSCRIPTS[footnotes.index(text)]

    others = [c for c in COMPARATORS if c != "edge"]
    cols = ["row", *(c + (mark(COLUMN_FOOTNOTES[c]) if c in COLUMN_FOOTNOTES else "") for c in COMPARATORS),
            *(f"edge÷{c}" for c in others), "must (edge)", "holds", "s"]
    left = (0, len(cols) - 3, len(cols) - 2)  # row, must, holds
    table = []
    for r in rows:
        u = r["unit"]
        here = {c: FOOTNOTES[(r["key"], c)] for c in r["expected"] if (r["key"], c) in FOOTNOTES}
        r["footnotes"] = here
        marks = {c: mark(text) for c, text in here.items()}
        cells = [r["row"]] + [fmt(r["values"].get(c), u) + marks.get(c, "") if c in r["expected"] else "–"
                              for c in COMPARATORS]
        cells += [(f"{r['ratios'][f'edge/{c}']:.2f}" + marks.get(c, "")) if r["ratios"][f"edge/{c}"] is not None
                  else "–" for c in others]
        # A must judged against a footnoted cell carries its mark too.
        against = must_comparator(r["must"])
        cells += [r["must"] or "–", r["holds"] + (marks.get(against[2], "") if against else ""),
                  f"{r['seconds']:g}"]
        table.append(cells)
    footnote_lines = [f"{SUPERSCRIPTS[i]} {text}" for i, text in enumerate(footnotes)]
    notes = [
        "Ratios are edge ÷ comparator in this run. Latency, CPU and memory: lower is better.",
        "upstream: nginx, 1 worker, `return 200` (24 B) and a sparse file (sendfile); nginx proxy: "
        f"{os.cpu_count()} workers, keepalive upstream, no disk buffering, default buffers except on the bulk "
        "rows' download (16 × 64 KiB, 256 KiB busy; docs/performance.md); rathole 0.5 defaults over TCP; "
        "edge + sidecar with their default settings (sidecar `connections: 2`).",
        "CPU per request: utime+stime of the middle-hop processes (nginx master + workers; rathole server + client; "
        "nginx + rathole server + client; edge + sidecar) during the 64-connection row ÷ requests, and its utime part (the rest is the kernel's: "
        "reads, writes, wake-ups, loopback delivery). Peak RSS: VmHWM summed over those processes "
        "after the h2 row (before the RTT and scale rows).",
        "HTTP/2: h2load -c4 -m25 over TLS; nginx, nginx+rathole and the edge terminate TLS (the latter two "
        "send HTTP/1.1 through their tunnel), rathole carries it to the upstream's TLS port, direct is that port.",
        "10 ms RTT: bench-delay (5 ms each way, bandwidth unlimited) between edge and sidecar, rathole client "
        "and server (also behind nginx for nginx+rathole), nginx and upstream, and client and upstream for direct; median of the transfers in the row time (1 to 5).",
        "scale: bench-scale runs N sidecars (`connections: 1` each, own environment) in one process against a "
        "fresh edge, then holds M responses open through it, spread over the sidecars; memory is the edge's "
        "VmRSS growth ÷ count; every response is then checked complete and exact, every tunnel still up.",
    ]

    def md_table():
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in table]
        return "\n".join(lines)

    widths = [max(len(cols[i]), *(len(t[i]) for t in table)) for i in range(len(cols))]
    text = [header, ""]
    text.append("  ".join(cols[i].ljust(widths[i]) if i in left else cols[i].rjust(widths[i])
                          for i in range(len(cols))).rstrip())
    text.append("  ".join("-" * widths[i] for i in range(len(cols))))
    for cells in table:
        text.append("  ".join(cells[i].ljust(widths[i]) if i in left else cells[i].rjust(widths[i])
                              for i in range(len(cols))).rstrip())
    text += ["", "what a comparator cannot do by design:"] + [f"  {ln}" for ln in footnote_lines]
    if b.warnings:
        text += ["", "warnings:"] + [f"  - {w}" for w in b.warnings]
    print("\n" + "\n".join(text))

    out_dir = os.path.join(ROOT, "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    meta = {"date": date, "commit": commit, "cores": cores, "kernel": kernel, "mode": "quick" if b.quick else "full",
            "duration_s": b.duration, "bulk_bytes": b.bulk_bytes, "total_s": round(total_secs, 1),
            "tools": tool_versions(), "notes": notes,
            "footnotes": [{"mark": SUPERSCRIPTS[i], "text": t} for i, t in enumerate(footnotes)]}
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump({**meta, "rows": rows, "warnings": b.warnings}, f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write(header + "\n\n" + md_table() + "\n\n" + "What a comparator cannot do by design:\n\n"
                + "\n".join(f"- {ln}" for ln in footnote_lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
        if b.warnings:
            f.write("\nWarnings:\n\n" + "\n".join(f"- {w}" for w in b.warnings) + "\n")
    sys.stderr.write(f"bench: wrote {os.path.relpath(out_dir, ROOT)}/bench.json and bench.md\n")
    return missing


def tool_versions():
    def first(argv, pattern=r".+"):
        try:
            out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10).stdout.decode()
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = re.search(pattern, out)
        return m.group(0).strip() if m else None
    return {"nginx": first(["nginx", "-v"], r"nginx/\S+"), "wrk": first(["wrk", "-v"], r"wrk \S+"),
            "h2load": first(["h2load", "--version"]), "curl": first(["curl", "--version"], r"curl \S+"),
            "rathole": ((first([RATHOLE, "--version"], r"Build Version:\s*\S+") or "").split() or [None])[-1]}


if __name__ == "__main__":
    sys.exit(main())
