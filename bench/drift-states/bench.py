"""Drift-states benchmark helper (stdlib only).

  bench.py populate URL TOKEN STACKS REPORTS   create STACKS stacks with REPORTS drift reports each
  bench.py measure URL TOKEN ROUNDS            time GET /metrics and GET /api/v1/stacks; prints JSON
"""
import base64
import json
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

IN_SYNC = {"format_version": "1.2", "terraform_version": "1.11.4", "resource_drift": [], "output_changes": {}}
DRIFTED = dict(IN_SYNC, resource_drift=[{
    "address": "terraform_data.a", "mode": "managed", "type": "terraform_data", "name": "a",
    "change": {"actions": ["update"], "before": {"id": "1", "input": "x"}, "after": {"id": "1", "input": "y"}}}])


def call(url, token, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def populate(url, token, stacks, reports):
    def one(i):
        name = f"bench/s{i:04d}"
        call(f"{url}/api/v1/stacks", token, "POST", {"name": name})
        for k in range(reports):
            # in sync, drifted, unknown, drifted, ...: every state the query distinguishes
            if k % 4 == 0:
                body = {"serial": None, "plan_json_b64": base64.b64encode(json.dumps(IN_SYNC).encode()).decode()}
            elif k % 4 == 2:
                body = {"serial": None, "error": "refresh failed"}
            else:
                body = {"serial": None, "plan_json_b64": base64.b64encode(json.dumps(DRIFTED).encode()).decode()}
            call(f"{url}/api/v1/stacks/{name.replace('/', '%2F')}/drift", token, "POST", body)
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, range(stacks)))


def measure(url, token, rounds):
    out = {}
    for path in ["/metrics", "/api/v1/stacks"]:
        call(url + path, token)  # warm
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            call(url + path, token)
            times.append((time.perf_counter() - t0) * 1000)
        out[path] = statistics.median(times)
    print(json.dumps(out))


if __name__ == "__main__":
    mode, url, token = sys.argv[1:4]
    if mode == "populate":
        populate(url, token, int(sys.argv[4]), int(sys.argv[5]))
    else:
        measure(url, token, int(sys.argv[4]))
