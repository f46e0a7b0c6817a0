"""A local forge OIDC issuer for airlock's login tests (PyJWT + cryptography, nothing of airlock's).

Serves, on 127.0.0.1 (port printed as the first line of stdout):
  /.well-known/openid-configuration, /.well-known/jwks.json   an RS256 issuer (key made here)
  /slow/...      the same, but the discovery document never comes in time (30 s)
  /garbage/...   a discovery document whose JWKS is not JSON
  POST /mint     {"claims": {...}, "attack": null|"none"|"hs256-public"|"other-key"|"wrong-kid"}
                 -> {"token": "..."}   (the issuer's key unless the attack says otherwise)
  GET /gh-token?audience=A   what a GitHub Actions runner answers ACTIONS_ID_TOKEN_REQUEST_URL:
                 {"value": token} for a push to refs/heads/main of org/repo, aud A
Claims `iss` default to the issuer, `iat`/`nbf`/`exp` to now, now, now + 300, `jti` to a new
UUID (a claim given as null is left out).
"""
import base64, hashlib, hmac, json, sys, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = "test-key-1"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwk(key, kid):
    n = key.public_key().public_numbers()
    as_bytes = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(as_bytes(n.n)), "e": b64(as_bytes(n.e))}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def send(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def base(self):
        return "http://%s" % self.headers["Host"]

    def do_GET(self):
        u = urlparse(self.path)
        base = self.base()
        if u.path == "/.well-known/openid-configuration":
            return self.send(200, {"issuer": base, "jwks_uri": base + "/.well-known/jwks.json"})
        if u.path == "/.well-known/jwks.json":
            return self.send(200, {"keys": [jwk(KEY, KID)]})
        if u.path.startswith("/slow/"):
            time.sleep(30)
            return self.send(200, {})
        if u.path == "/garbage/.well-known/openid-configuration":
            return self.send(200, {"issuer": base + "/garbage", "jwks_uri": base + "/garbage/jwks"})
        if u.path == "/garbage/jwks":
            return self.send(200, b"\x00\xffnot json" * 100, "application/octet-stream")
        if u.path == "/gh-token":
            aud = parse_qs(u.query)["audience"][0]
            claims = {"sub": "repo:org/repo:ref:refs/heads/main", "repository": "org/repo",
                      "repository_id": "1001", "repository_owner_id": "2002",
                      "ref": "refs/heads/main", "event_name": "push", "aud": aud}
            return self.send(200, {"value": mint(base, claims, None)})
        self.send(404, {"error": "no such path"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send(200, {"token": mint(self.base(), body["claims"], body.get("attack"))})


def mint(base, claims, attack):
    now = int(time.time())
    # A new jti on every token, as GitHub and GitLab do.
    c = {"iss": base, "iat": now, "nbf": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    c.update(claims)
    c = {k: v for k, v in c.items() if v is not None}
    if attack == "none":
        return "%s.%s." % (b64(json.dumps({"alg": "none", "kid": KID}).encode()), b64(json.dumps(c).encode()))
    if attack == "hs256-public":
        # HMAC keyed with the issuer's public key (PEM and the JWK text both tried by attackers).
        pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing = "%s.%s" % (b64(json.dumps({"alg": "HS256", "kid": KID}).encode()), b64(json.dumps(c).encode()))
        return signing + "." + b64(hmac.new(pem, signing.encode(), hashlib.sha256).digest())
    if attack == "other-key":
        return jwt.encode(c, OTHER, algorithm="RS256", headers={"kid": KID})
    if attack == "wrong-kid":
        return jwt.encode(c, KEY, algorithm="RS256", headers={"kid": "not-a-key"})
    return jwt.encode(c, KEY, algorithm="RS256", headers={"kid": KID})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
