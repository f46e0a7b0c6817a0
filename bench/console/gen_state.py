#!/usr/bin/env python3
"""Writes a ~10 MB Terraform state v4 (terraform_data instances with bulky attributes).

gen_state.py SERIAL LINEAGE CHANGED > state.json
CHANGED: how many instances differ from serial 1 (their `input` changes).
"""
import json
import sys

serial, lineage, changed = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
n = 5000
pad = "x" * 1000
instances = []
for i in range(n):
    value = f"v1-{i}-{pad}" if i >= changed else f"v2-{i}-{pad}"
    instances.append({
        "index_key": i,
        "schema_version": 0,
        "attributes": {
            "id": f"{i:08x}-0000-0000-0000-000000000000",
            "input": {"value": value, "type": "string"},
            "output": {"value": value, "type": "string"} if i % 2 else None,
            "triggers_replace": None,
            "secret": f"s3cret-{i}",
        },
        "sensitive_attributes": [[{"type": "get_attr", "value": "secret"}]],
    })
state = {
    "version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": lineage,
    "outputs": {"count": {"value": n, "type": "number"}},
    "resources": [{"mode": "managed", "type": "terraform_data", "name": "r",
                   "provider": "provider[\"terraform.io/builtin/terraform\"]", "instances": instances}],
    "check_results": None,
}
json.dump(state, sys.stdout, indent=2)
