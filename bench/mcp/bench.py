"""MCP round trips next to the same reads through the CLI (bench/mcp/run.sh runs this).

Pushes a ~10 MB state (terraform_data instances with padded attributes) to a stack, then:
  - over stdio: one long-lived `airlock mcp` (as an agent keeps it), newline-delimited JSON-RPC;
    per round list_stacks + state_resources (first page of 1000, and every page);
  - through the CLI: `airlock stack list` + `airlock state show STACK` (a process each, as an
    agent shelling out would);
  - tools/list latency: over stdio (bridge + HTTP hop) and straight to /mcp on one keep-alive
    HTTP connection (the server's own cost).
Prints medians (and p99 for tools/list) and the ratios.
"""

import base64
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse

BIN, URL, ADMIN, AGENT = sys.argv[1:5]
ROUNDS = int(sys.argv[5]) if len(sys.argv) > 5 else 20
STACK = "bench/big"
u = urllib.parse.urlparse(URL)


def conn():
    return http.client.HTTPConnection(u.hostname, u.port, timeout=300)


def request(c, method, path, token, body=b"", headers=None):
    h = {"Authorization": "Bearer " + token}
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    return r.status, data


def push_state(instances, pad):
    resources = [{
        "mode": "managed", "type": "terraform_data", "name": "r",
        "provider": "provider[\"terraform.io/builtin/terraform\"]",
        "instances": [{
            "index_key": i, "schema_version": 0,
            "attributes": {"id": f"id-{i:08d}", "input": "x" * pad, "output": None, "triggers_replace": None},
            "sensitive_attributes": [],
        } for i in range(instances)],
    }]
    doc = json.dumps({"version": 4, "terraform_version": "1.11.4", "serial": 1,
                      "lineage": "0b4d7c56-1f0e-4c55-9a61-6f3f1f1c7a01", "outputs": {},
                      "resources": resources, "check_results": None}).encode()
    c = conn()
    lock = json.dumps({"ID": "bench-lock", "Operation": "OperationTypeApply", "Info": "", "Who": "bench",
                       "Version": "1.11.4", "Created": "2026-01-01T00:00:00Z", "Path": ""}).encode()
    for method, path, body in [("LOCK", f"/state/{STACK}", lock),
                               ("POST", f"/state/{STACK}?ID=bench-lock", doc),
                               ("UNLOCK", f"/state/{STACK}", lock)]:
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        status, data = request(c, method, path, ADMIN, body, {"Content-Type": "application/json", "Content-MD5": md5})
        assert status == 200, (method, status, data[:300])
    return len(doc)


class Stdio:
    def __init__(self):
        env = dict(os.environ, AIRLOCK_URL=URL, AIRLOCK_TOKEN=AGENT)
        self.p = subprocess.Popen([BIN, "mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=env)
        self.next = 0
        self.ask("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                "clientInfo": {"name": "bench", "version": "1"}})
        self.p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        self.p.stdin.flush()

    def ask(self, method, params):
        self.next += 1
        msg = {"jsonrpc": "2.0", "id": self.next, "method": method, "params": params}
        self.p.stdin.write(json.dumps(msg).encode() + b"\n")
        self.p.stdin.flush()
        answer = json.loads(self.p.stdout.readline())
        assert answer.get("id") == self.next and "result" in answer, str(answer)[:300]
        return answer["result"]

    def tool(self, name, args):
        r = self.ask("tools/call", {"name": name, "arguments": args})
        assert not r.get("isError"), str(r)[:300]
        return r["structuredContent"]

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def cli(*args):
    env = dict(os.environ, AIRLOCK_URL=URL, AIRLOCK_TOKEN=AGENT)
    subprocess.run([BIN, *args, "--format", "json"], env=env, check=True, stdout=subprocess.DEVNULL)


def ms(x):
    return f"{x * 1000:.1f} ms"


def main():
    size = push_state(20000, 400)
    s = Stdio()
    total = s.tool("state_resources", {"stack": STACK, "limit": 1})["total"]

    def mcp_first_page():
        s.tool("list_stacks", {})
        s.tool("state_resources", {"stack": STACK, "limit": 1000})

    def mcp_all_pages():
        s.tool("list_stacks", {})
        cursor, n = None, 0
        while True:
            args = {"stack": STACK, "limit": 1000}
            if cursor:
                args["cursor"] = cursor
            page = s.tool("state_resources", args)
            n += len(page["resources"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert n == total

    def cli_reads():
        cli("stack", "list")
        cli("state", "show", STACK)

    for f in (mcp_first_page, mcp_all_pages, cli_reads):  # warm caches once
        f()
    first, every, via_cli = [], [], []
    for _ in range(ROUNDS):
        first.append(timed(mcp_first_page))
        every.append(timed(mcp_all_pages))
        via_cli.append(timed(cli_reads))

    list_stdio = [timed(lambda: s.ask("tools/list", {})) for _ in range(200)]
    s.close()
    c = conn()
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    hdr = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    request(c, "POST", "/mcp", AGENT, body, hdr)
    list_http = []
    for _ in range(200):
        t0 = time.perf_counter()
        status, _ = request(c, "POST", "/mcp", AGENT, body, hdr)
        list_http.append(time.perf_counter() - t0)
        assert status == 200

    med = statistics.median
    p99 = lambda xs: sorted(xs)[int(len(xs) * 0.99) - 1]
    print(f"state: {size / 1e6:.1f} MB, {total} instances; rounds: {ROUNDS}; load: {os.getloadavg()[0]:.2f}")
    print(f"MCP stdio  list_stacks + state_resources (first 1000):   median {ms(med(first))}")
    print(f"MCP stdio  list_stacks + state_resources (all {total // 1000} pages): median {ms(med(every))}")
    print(f"CLI        airlock stack list + airlock state show:     median {ms(med(via_cli))}")
    print(f"ratio MCP first page / CLI: {med(first) / med(via_cli):.2f}; MCP all pages / CLI: {med(every) / med(via_cli):.2f}")
    print(f"tools/list over stdio (bridge + HTTP): median {ms(med(list_stdio))}, p99 {ms(p99(list_stdio))}")
    print(f"tools/list over HTTP /mcp (keep-alive): median {ms(med(list_http))}, p99 {ms(p99(list_http))}  (target < 5 ms)")


main()
