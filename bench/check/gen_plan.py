#!/usr/bin/env python3
"""Generate a synthetic but realistic `terraform show -json` plan for benchmarking `airlock check`.

Mixed AWS/GCP/Azure resources in nested modules, ~1 KB of attributes per change, with the
same top-level layout Terraform writes (planned_values, resource_changes, prior_state,
configuration). Deterministic for a given count. Usage: gen_plan.py COUNT OUT.json
"""
import json
import random
import sys

TYPES = [
    ("aws_instance", "registry.terraform.io/hashicorp/aws"),
    ("aws_security_group_rule", "registry.terraform.io/hashicorp/aws"),
    ("aws_iam_role_policy", "registry.terraform.io/hashicorp/aws"),
    ("aws_s3_bucket", "registry.terraform.io/hashicorp/aws"),
    ("aws_db_instance", "registry.terraform.io/hashicorp/aws"),
    ("aws_route53_record", "registry.terraform.io/hashicorp/aws"),
    ("google_compute_instance", "registry.terraform.io/hashicorp/google"),
    ("google_storage_bucket", "registry.terraform.io/hashicorp/google"),
    ("google_project_iam_member", "registry.terraform.io/hashicorp/google"),
    ("azurerm_linux_virtual_machine", "registry.terraform.io/hashicorp/azurerm"),
    ("azurerm_network_interface", "registry.terraform.io/hashicorp/azurerm"),
    ("azurerm_storage_account", "registry.terraform.io/hashicorp/azurerm"),
]
# Mostly no-ops and updates, like a real large stack; a few creates, deletes, replaces.
ACTIONS = [["no-op"]] * 70 + [["update"]] * 15 + [["create"]] * 8 + [["delete"]] * 2 + [
    ["delete", "create"]
] * 3 + [["create", "delete"]] * 2


def attrs(rng, t, i):
    a = {
        "id": f"{t}-{i:08x}",
        "name": f"{t.split('_', 1)[1]}-{i}",
                "tags": {"team": rng.choice(["core", "data", "web"]), "env": "prod"},
        "deletion_protection": rng.random() < 0.5,
        "skip_final_snapshot": False,
        "network": [{"subnet_id": f"subnet-{rng.getrandbits(32):08x}", "private_ip": f"10.{i % 256}.{(i >> 8) % 256}.{rng.randint(1, 254)}", "security_groups": [f"sg-{rng.getrandbits(32):08x}"]}],
        "labels": {f"k{j}": f"v{rng.getrandbits(24):06x}" for j in range(2)},
        "size": rng.randint(1, 1024),
        "enabled": True,
    }
    return a


def main():
    count = int(sys.argv[1])
    out = open(sys.argv[2], "w")
    rng = random.Random(count)
    w = out.write
    w('{"format_version":"1.2","terraform_version":"1.11.4",')
    changes = []
    # planned_values and resource_changes are written in two passes from the same seed.
    for section in ("planned_values", "resource_changes", "prior_state"):
        rng.seed(count)
        if section == "planned_values":
            w('"planned_values":{"root_module":{"resources":[')
        elif section == "resource_changes":
            w(',"resource_changes":[')
        else:
            w(',"prior_state":{"format_version":"1.0","terraform_version":"1.11.4","values":{"root_module":{"resources":[')
        first = True
        for i in range(count):
            t, provider = TYPES[i % len(TYPES)]
            module = f"module.m{i % 50}.module.n{(i // 50) % 20}"
            name = f"r{i}"
            address = f"{module}.{t}.{name}"
            actions = ACTIONS[rng.randrange(len(ACTIONS))]
            before = attrs(rng, t, i)
            after = dict(before)
            if actions == ["update"]:
                after["size"] = before["size"] + 1
            if section == "planned_values":
                if actions == ["delete"]:
                    continue
                rec = {"address": address, "mode": "managed", "type": t, "name": name,
                       "provider_name": provider, "schema_version": 0, "values": after,
                       "sensitive_values": {"tags": {}, "network": [{}], "labels": {}}}
            elif section == "prior_state":
                if actions == ["create"]:
                    continue
                rec = {"address": address, "mode": "managed", "type": t, "name": name,
                       "provider_name": provider, "schema_version": 0, "values": before,
                       "sensitive_values": {"tags": {}, "network": [{}], "labels": {}}}
            else:
                rec = {"address": address, "module_address": module, "mode": "managed", "type": t,
                       "name": name, "provider_name": provider,
                       "change": {"actions": actions,
                                  "before": None if actions == ["create"] else before,
                                  "after": None if actions == ["delete"] else after,
                                  "after_unknown": {"id": True} if "create" in actions else {},
                                  "before_sensitive": False if actions == ["create"] else {"tags": {}},
                                  "after_sensitive": False if actions == ["delete"] else {"tags": {}}}}
                if len(actions) == 2:
                    rec["action_reason"] = "replace_because_cannot_update"
                    rec["change"]["replace_paths"] = [["name"]]
            w(("" if first else ",") + json.dumps(rec, separators=(",", ":")))
            first = False
        w("]}}" if section == "planned_values" else ("]" if section == "resource_changes" else "]}}}"))
    w(',"configuration":{"provider_config":{"aws":{"name":"aws","full_name":"registry.terraform.io/hashicorp/aws"}},"root_module":{}}')
    w(',"timestamp":"2026-11-24T03:09:32Z","applyable":true,"complete":true,"errored":false}\n')
    out.close()


if __name__ == "__main__":
    main()
