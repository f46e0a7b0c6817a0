"""Verifies airlock identity tokens as a cloud would: only the issuer URL, its discovery document
and JWKS over HTTP (PyJWT + cryptography). argv: ISSUER AUDIENCE, then one token per stdin line
as `EXPECTED_SUB TOKEN`. Prints one JSON line per token with its verified claims; exits 1 on
the first failure."""
import json, re, sys, urllib.request

import jwt

issuer, audience = sys.argv[1], sys.argv[2]
disco = json.load(urllib.request.urlopen(issuer + "/.well-known/openid-configuration"))
assert disco["issuer"] == issuer, disco
assert disco["id_token_signing_alg_values_supported"] == ["ES256"], disco
jwks = jwt.PyJWKClient(disco["jwks_uri"], cache_keys=False)
SUB = re.compile(r"^stack:[a-z0-9._/-]+:run_phase:(plan|apply)$")
for line in sys.stdin:
    if not line.strip():
        continue
    want_sub, token = line.split()
    try:
        key = jwks.get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer=issuer,
                            options={"require": ["iss", "aud", "iat", "nbf", "exp", "jti", "sub"]})
    except Exception as e:
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}), flush=True)
        sys.exit(1)
    assert claims["sub"] == want_sub and SUB.match(claims["sub"]), claims
    assert claims["exp"] - claims["iat"] <= 3600, claims
    phase = claims["airlock_run_phase"]
    assert claims["sub"].endswith(":run_phase:" + phase) and claims["sub"] == "stack:%s:run_phase:%s" % (claims["airlock_stack"], phase)
    if phase == "apply":
        assert re.match(r"^[0-9a-f]{64}$", claims["airlock_plan_sha256"]) and claims["airlock_run_id"], claims
    else:
        assert "airlock_plan_sha256" not in claims, claims
    print(json.dumps({"kid": key.key_id, "claims": claims}), flush=True)
