#!/usr/bin/env python3
"""Generates a Terraform monorepo of N `.tf` files for the `airlock doctor` benchmark:
N/10 root modules of 10 files each (backend, providers, variables, resources with critical
types and protections, local module calls), 50 shared modules, a GitHub workflow per 100 roots."""
import os
import sys

root, n = sys.argv[1], int(sys.argv[2])
modules = 50
roots = max(1, (n - modules * 2) // 10)


def w(rel, text):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)


for m in range(modules):
    w(f"modules/m{m}/variables.tf", 'variable "protect" {\n  default = true\n}\nvariable "name" {}\n')
    w(f"modules/m{m}/main.tf", f'''resource "aws_db_instance" "db" {{
  identifier               = var.name
  deletion_protection      = var.protect
  skip_final_snapshot      = false
  final_snapshot_identifier = "final-m{m}"
  delete_automated_backups = false
  backup_retention_period  = 7
  lifecycle {{
    prevent_destroy = true
  }}
}}
''')
for r in range(roots):
    d = f"live/team{r % 20}/stack{r}"
    w(f"{d}/backend.tf", f'terraform {{\n  backend "s3" {{\n    bucket       = "state-{r}"\n    key          = "{d}"\n    use_lockfile = true\n    encrypt      = true\n  }}\n}}\n')
    w(f"{d}/providers.tf", 'provider "aws" {\n  region = "eu-west-1"\n}\n')
    w(f"{d}/variables.tf", "".join(f'variable "v{i}" {{\n  default = "x{i}"\n}}\n' for i in range(10)))
    w(f"{d}/outputs.tf", "".join(f'output "o{i}" {{\n  value = var.v{i}\n}}\n' for i in range(10)))
    w(f"{d}/db.tf", f'module "db" {{\n  source  = "../../../modules/m{r % modules}"\n  name    = "db-{r}"\n  protect = {"true" if r % 3 else "false"}\n}}\n')
    w(f"{d}/bucket.tf", f'resource "aws_s3_bucket" "b" {{\n  bucket        = "b-{r}"\n  force_destroy = {"false" if r % 2 else "true"}\n}}\n')
    w(f"{d}/versioning.tf", 'resource "aws_s3_bucket_versioning" "b" {\n  bucket = aws_s3_bucket.b.id\n  versioning_configuration {\n    status = "Enabled"\n  }\n}\n')
    w(f"{d}/network.tf", "".join(f'resource "terraform_data" "n{i}" {{\n  input = var.v{i}\n}}\n' for i in range(20)))
    w(f"{d}/locals.tf", 'locals {\n  tags = { team = "t", env = "prod" }\n}\n')
    w(f"{d}/kms.tf", 'resource "aws_kms_key" "k" {\n  deletion_window_in_days = 7\n}\n')
    if r % 100 == 0:
        w(f".github/workflows/stack{r}.yml", f'''on:
  pull_request:
  push:
    branches: [main]
jobs:
  plan:
    if: github.event_name == 'pull_request'
    runs-on: ubuntu-latest
    steps:
      - run: terraform -chdir={d} plan -out=tfplan
  apply:
    if: github.event_name == 'push'
    runs-on: ubuntu-latest
    steps:
      - run: terraform -chdir={d} apply -auto-approve
''')
count = sum(1 for _, _, fs in os.walk(root) for f in fs if f.endswith(".tf"))
print(f"{count} .tf files in {roots} root modules and {modules} modules")
