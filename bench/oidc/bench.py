"""Open-loop load at a fixed rate on one keep-alive connection per worker; reports client
round-trip percentiles and the server's own per-request time (its info log's `ms=`)."""
import http.client, json, re, sys, threading, time, urllib.request

url, agent, issuer, secs, server_log = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
host = url.split("//")[1]
RATE = 100


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def load(path, bodies, token, want):
    """Sends bodies[i] at t0 + i/RATE from 4 workers; returns client latencies (ms)."""
    lat, errors, lock = [], [], threading.Lock()
    t0 = time.perf_counter() + 0.2
    nxt = iter(range(len(bodies)))

    def worker():
        conn = http.client.HTTPConnection(host)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            due = t0 + i / RATE
            time.sleep(max(0, due - time.perf_counter()))
            s = time.perf_counter()
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = "Bearer " + token
            conn.request("POST", path, body=bodies[i], headers=headers)
            r = conn.getresponse()
            r.read()
            e = time.perf_counter()
            with lock:
                lat.append((e - s) * 1000)
                if r.status != want:
                    errors.append(r.status)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    elapsed = time.perf_counter() - t0
    return lat, errors, len(bodies) / elapsed


def server_ms(path_re):
    ms = []
    for line in open(server_log):
        if re.search(r"path=%s " % path_re, line):
            m = re.search(r" ms=(\d+)", line)
            if m:
                ms.append(int(m.group(1)))
    return ms


def report(name, lat, errors, rate, sms):
    print("%s: %d requests at %.1f/s, %d errors" % (name, len(lat), rate, len(errors)))
    print("  client round trip: p50 %.2f ms, p99 %.2f ms, max %.2f ms" % (pct(lat, 50), pct(lat, 99), max(lat)))
    print("  server time (log, whole ms): p50 %d ms, p99 %d ms, max %d ms" % (pct(sms, 50), pct(sms, 99), max(sms)))


body = json.dumps({"audience": "sts.amazonaws.com"})
lat, errors, rate = load("/api/v1/stacks/bench%2Fapp/identity-token", [body] * (RATE * secs), agent, 201)
report("phase token (plan)", lat, errors, rate, server_ms(r"/api/v1/stacks/bench%2Fapp/identity-token"))

# CI logins: distinct job tokens, minted first; one login warms the JWKS cache.
n = RATE * 9  # under the trust's 1,000 logins an hour
claims = {"sub": "repo:org/repo:ref:refs/heads/main", "repository": "org/repo", "repository_id": "1001", "repository_owner_id": "2002", "ref": "refs/heads/main",
          "event_name": "push", "aud": url}
def mint(i):
    c = dict(claims, jti="job-%d" % i)
    req = urllib.request.Request(issuer + "/mint", data=json.dumps({"claims": c}).encode(), headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["token"]
tokens = [json.dumps({"token": mint(i)}) for i in range(n + 1)]
warm, _, _ = load("/api/v1/oidc/login", tokens[:1], None, 201)
before = len(server_ms(r"/api/v1/oidc/login"))
lat, errors, rate = load("/api/v1/oidc/login", tokens[1:], None, 201)
report("CI login (cached JWKS)", lat, errors, rate, server_ms(r"/api/v1/oidc/login")[before:])
