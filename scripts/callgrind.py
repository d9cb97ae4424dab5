#!/usr/bin/env python3
"""The edge's instructions per request, counted by callgrind (see scripts/callgrind).

sample-upstream <- sidecar <- tunnel <- edge-proxy (under callgrind) <- h2load.
A warm-up load runs first; callgrind's counters are then zeroed, a bounded
load of keep-alive requests runs (one request in flight per connection, or
--streams per HTTP/2 connection), the counters are dumped, and the edge's
total Ir over that load is divided by the requests that succeeded. Prints
one line: the protocol, the requests, Ir per request.
"""

import argparse
import bisect
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

RELEASE_DIR = os.environ["RELEASE_DIR"]
HOST = "hello-8080-bench.preview.localhost"
TOKEN = "callgrind-token"


def start(work, name, argv, ready, timeout=120.0):
    log = open(os.path.join(work, f"{name}.log"), "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, RUST_LOG="warn"), start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(os.path.join(work, f"{name}.log"), errors="replace") as f:
            found = re.search(ready, f.read(), re.M)
        if found:
            return proc, found
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    with open(os.path.join(work, f"{name}.log"), errors="replace") as f:
        sys.exit(f"{name} did not start:\n{f.read()[-3000:]}")


# `--route plain|policy|wasm|jwt|cookie|limited|refused`: requests go through one of the
# bench's custom-domain routes: without a header policy, with the one its
# `policy` row uses, with that policy in the wasm filter, or needing an
# identity (an ES256 bearer JWT or a session cookie, sent with every
# request), or with a rate limit and in-flight cap of its own that never
# trigger, or with a limit that refuses them (429s counted instead of
# 200s); the differences are their costs.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import JWT_AUDIENCE, JWT_ISSUER, JWT_KEYS, ROUTE_HOSTS, policy_routes, session_cookie  # noqa: E402


def h2load(addr, requests, connections, streams, h2, host=HOST, headers=(), status="2xx"):
    argv = ["h2load", "-n", str(requests), "-c", str(connections), "-m", str(streams), "-t", "1",
            "-H", f":authority: {host}", *headers, f"http://{addr}/"]
    if not h2:
        argv.insert(1, "--h1")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=3600).stdout
    codes = re.search(r"status codes: (?P<_2xx>\d+) 2xx, \d+ 3xx, (?P<_4xx>\d+) 4xx", out)
    answered = int(codes.group(f"_{status}")) if codes else 0
    # The refused route lets its first request of the hour through.
    if answered < requests - (status == "4xx"):
        sys.exit(f"h2load: not every request was answered {status}:\n{out[-2000:]}")
    return answered


def guest(perf_map, dump, requests, top=25):
    """Prints the instructions per request spent in the filter's compiled
    code (callgrind's `???:0x…` entries, named by wasmtime's perf map), in
    all and by function, exclusive of what they call (host functions)."""
    spans = []
    with open(perf_map) as f:
        for line in f:
            addr, size, name = line.rstrip("\n").split(" ", 2)
            start = int(addr, 16)
            spans.append((start, start + int(size, 16), name))
    spans.sort()
    starts = [s for s, _, _ in spans]
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", dump], capture_output=True,
                         text=True, check=True).stdout
    cost = {}
    for m in re.finditer(r"^\s*([\d,]+) \([ \d.]+%\)\s+\?\?\?:0x([0-9a-f]+)", out, re.M):
        at = int(m.group(2), 16)
        i = bisect.bisect_right(starts, at) - 1
        if i < 0 or at >= spans[i][1]:
            continue  # not the filter's code (e.g. the dynamic loader)
        name = spans[i][2]
        cost[name] = cost.get(name, 0) + int(m.group(1).replace(",", ""))
    names = sorted(cost, key=cost.get, reverse=True)
    try:
        shown = subprocess.run(["rustfilt"], input="\n".join(names), capture_output=True, text=True,
                               check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        shown = names
    print(f"in the filter's compiled code: {sum(cost.values()) / requests / 1000:.2f}k Ir per request")
    for name, text in list(zip(names, shown))[:top]:
        print(f"  {cost[name] / requests / 1000:6.2f}k  {text[:160]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--h2", action="store_true", help="HTTP/2 with prior knowledge (h2c) from the visitor")
    parser.add_argument("--streams", type=int, default=1, help="requests in flight per connection")
    parser.add_argument("--threads", type=int, default=2, help="the edge's worker threads")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    parser.add_argument("--route", choices=sorted(ROUTE_HOSTS),
                        help="through a custom-domain route: without a header policy, with it natively, in the wasm filter")
    parser.add_argument("--guest", action="store_true",
                        help="with --route wasm: the filter's compiled functions, by name, and their share")
    args = parser.parse_args()
    if args.guest and args.route != "wasm":
        parser.error("--guest needs --route wasm")
    if args.guest:
        os.environ["EDGE_WASM_PERF_MAP"] = "1"
    if args.route != "wasm":
        # Compiling the module under valgrind takes minutes: only when measured.
        os.environ.pop("HEADER_POLICY_WASM", None)

    work = tempfile.mkdtemp(prefix="callgrind-")
    procs = []
    try:
        upstream, found = start(work, "upstream", [f"{RELEASE_DIR}/sample-upstream", "--listen", "127.0.0.1:0"],
                                r"listening (\S+)")
        procs.append(upstream)
        upstream_addr = found.group(1)
        token_hash = subprocess.run([f"{RELEASE_DIR}/edge-proxy", "hash-token"], input=TOKEN + "\n", capture_output=True,
                                    text=True, check=True).stdout.strip()
        h2c = ", h2c: true" if args.h2 else ""
        with open(os.path.join(work, "edge.yaml"), "w") as f:
            f.write(f"""listen: {{ http: 127.0.0.1:0, tunnel: 127.0.0.1:0{h2c} }}
preview: {{ domains: [preview.localhost] }}
clusters:
  - name: bench
    token_sha256: "{token_hash}"
    environments: [bench]
limits:
  cluster: {{}}
{policy_routes()}""")
        out_file = os.path.join(work, "callgrind.out")
        edge, _ = start(work, "edge", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
                                       f"{RELEASE_DIR}/edge-proxy", "--config", os.path.join(work, "edge.yaml"),
                                       "--threads", str(args.threads)], r"edge-proxy listening .*")
        procs.append(edge)
        with open(os.path.join(work, "edge.log")) as f:
            listening = dict(re.findall(r"(\w+)=(\S+)", re.search(r"edge-proxy listening .*", f.read()).group(0)))
        with open(os.path.join(work, "sidecar.yaml"), "w") as f:
            f.write(f"""edge: http://{listening['tunnel']}
token: {TOKEN}
environment: bench
targets:
  - {{ service: hello, port: 8080, address: {upstream_addr} }}
""")
        sidecar, _ = start(work, "sidecar", [f"{RELEASE_DIR}/sidecar", "run", "--config",
                                             os.path.join(work, "sidecar.yaml")], r"^Forwarding")
        procs.append(sidecar)

        host = ROUTE_HOSTS.get(args.route, HOST)
        headers = ()
        if args.route == "jwt":
            token = subprocess.run([f"{RELEASE_DIR}/bench-token", "--alg", "ES256", "--key",
                                    os.path.join(JWT_KEYS, "ec.key"), "--issuer", JWT_ISSUER,
                                    "--audience", JWT_AUDIENCE], check=True, capture_output=True,
                                   text=True).stdout.strip()
            headers = ("-H", f"authorization: Bearer {token}")
        if args.route == "cookie":
            headers = ("-H", f"cookie: {session_cookie(f'{RELEASE_DIR}/bench-token')}")
        status = "4xx" if args.route == "refused" else "2xx"
        h2load(listening["http"], max(1000, args.requests // 10), args.connections, args.streams, args.h2, host,
               headers, status)
        subprocess.run(["callgrind_control", "--zero", str(edge.pid)], check=True, capture_output=True)
        requests = h2load(listening["http"], args.requests, args.connections, args.streams, args.h2, host, headers,
                          status)
        subprocess.run(["callgrind_control", "--dump", str(edge.pid)], check=True, capture_output=True)

        total = 0
        for dump in glob.glob(out_file + "*"):
            with open(dump) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        total += int(line.split()[1])
                        break
        if not total:
            sys.exit(f"no callgrind dump in {work}")
        proto = "h2c" if args.h2 else "http/1.1"
        print(f"{proto} {args.connections}x{args.streams}: {requests} requests, "
              f"{total / requests / 1000:.1f}k Ir per request at the edge")
        if args.guest:
            perf_map = f"/tmp/perf-{edge.pid}.map"
            try:
                guest(perf_map, out_file + ".1", requests)
            finally:
                os.remove(perf_map)
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
