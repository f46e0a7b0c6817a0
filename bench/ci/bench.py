#!/usr/bin/env python3
"""Change detection benchmark (issue 11): `airlock ci affected` on synthetic monorepos.

For each stack count, builds a git repository: N stacks (each calls 3 local modules and one
registry module, has a var file and a lock file; chains of 10 stacks declare depends_on; every
20th has an also_when_changed glob) and 300 local modules (200 top-level, in chains of 5, and 100
nested ones called with ./sub). A feature branch changes 50 files (20 stack files, 15 module files,
10 var files, 3 READMEs, 2 renames). Then times `airlock ci affected --base main --format json`
(wall clock and the children's CPU), REPEAT times, and prints one table.

    bench/ci/bench.py AIRLOCK_BIN [STACKS...] [--repeat N]
"""
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MODULES_TOP, MODULES_NESTED = 200, 100
ENV = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
           GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="b@example.com",
           GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="b@example.com")
ENV.pop("GITHUB_BASE_REF", None)
ENV.pop("CI_MERGE_REQUEST_DIFF_BASE_SHA", None)


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, env=ENV, check=True, stdout=subprocess.DEVNULL)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def generate(repo, stacks, rng):
    cfg = []
    for i in range(stacks):
        block = f'stack "s/{i:05d}" {{\n  dir = "stacks/s{i:05d}"\n'
        if i % 10:
            block += f'  depends_on = ["s/{i - 1:05d}"]\n'
        if i % 20 == 0:
            block += f'  also_when_changed = ["shared/s{i:05d}/*"]\n'
        cfg.append(block + "}\n")
        d = f"{repo}/stacks/s{i:05d}"
        calls = "".join(
            f'module "m{m}" {{\n  source = "../../modules/m{m:03d}"\n  n = {i}\n}}\n'
            for m in rng.sample(range(MODULES_TOP), 3))
        write(f"{d}/main.tf", calls + 'module "vpc" {\n  source = "terraform-aws-modules/vpc/aws"\n}\n'
              f'resource "terraform_data" "r" {{\n  input = var.x\n}}\n')
        write(f"{d}/variables.tf", 'variable "x" {\n  type = string\n}\n')
        write(f"{d}/terraform.tfvars", f'x = "{i}"\n')
        write(f"{d}/.terraform.lock.hcl", "# lock\n")
        write(f"{d}/README.md", f"stack {i}\n")
    write(f"{repo}/airlock.hcl", "".join(cfg))
    for m in range(MODULES_TOP):
        d = f"{repo}/modules/m{m:03d}"
        body = 'variable "n" {}\nresource "terraform_data" "m" {\n  input = var.n\n}\n'
        if m % 5 != 4 and m + 1 < MODULES_TOP:
            body += f'module "next" {{\n  source = "../m{m + 1:03d}"\n  n = var.n\n}}\n'
        if m < MODULES_NESTED:
            body += 'module "sub" {\n  source = "./sub"\n}\n'
            write(f"{d}/sub/main.tf", 'resource "terraform_data" "s" {}\n')
        write(f"{d}/main.tf", body)
        write(f"{d}/outputs.tf", 'output "id" {\n  value = terraform_data.m.id\n}\n')
    write(f"{repo}/policy/deny.rego", "package main\n")


def change(repo, stacks, rng):
    picks = rng.sample(range(stacks), 35)
    changed = 0
    for i in picks[:20]:
        with open(f"{repo}/stacks/s{i:05d}/main.tf", "a") as f:
            f.write("# changed\n")
        changed += 1
    for m in rng.sample(range(MODULES_TOP), 10) + [f"{n:03d}/sub" for n in rng.sample(range(MODULES_NESTED), 5)]:
        path = f"{repo}/modules/m{m:03d}/main.tf" if isinstance(m, int) else f"{repo}/modules/m{m}/main.tf"
        with open(path, "a") as f:
            f.write("# changed\n")
        changed += 1
    for i in picks[20:30]:
        write(f"{repo}/stacks/s{i:05d}/terraform.tfvars", f'x = "{i}-changed"\n')
        changed += 1
    for i in picks[30:33]:
        with open(f"{repo}/stacks/s{i:05d}/README.md", "a") as f:
            f.write("more\n")
        changed += 1
    for i in picks[33:35]:
        git(repo, "mv", f"stacks/s{i:05d}/variables.tf", f"stacks/s{i:05d}/vars.tf")
        changed += 1
    return changed


def run_once(binary, repo):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([binary, "ci", "affected", "--base", "main", "--format", "json"],
                         cwd=repo, env=ENV, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(out.stdout)


def main():
    args = sys.argv[1:]
    repeat = 5
    if "--repeat" in args:
        k = args.index("--repeat")
        repeat = int(args[k + 1])
        del args[k:k + 2]
    binary, counts = args[0], [int(a) for a in args[1:]] or [250, 500, 1000, 2000]
    print(f"airlock ci affected --base main --format json; {MODULES_TOP + MODULES_NESTED} modules; "
          f"median of {repeat} runs after one warm-up; CPU = user+sys of airlock and its git children")
    print(f"{'stacks':>7} {'files':>7} {'changed':>8} {'affected':>9} {'median s':>9} {'min s':>7} "
          f"{'CPU s':>6} {'ms/stack':>9}")
    for n in counts:
        rng = random.Random(11 + n)
        repo = tempfile.mkdtemp(prefix=f"airlock-bench-ci-{n}-")
        try:
            git(repo, "init", "-q", "-b", "main")
            generate(repo, n, rng)
            git(repo, "add", "-A")
            git(repo, "commit", "-qm", "base")
            git(repo, "checkout", "-qb", "feature")
            changed = change(repo, n, rng)
            git(repo, "add", "-A")
            git(repo, "commit", "-qm", "change")
            files = int(subprocess.run(["git", "ls-files"], cwd=repo, env=ENV, capture_output=True,
                                       check=True).stdout.count(b"\n"))
            run_once(binary, repo)  # warm-up: page cache
            runs = [run_once(binary, repo) for _ in range(repeat)]
            walls = [r[0] for r in runs]
            cpus = [r[1] for r in runs]
            affected = len(runs[0][2]["stacks"])
            med = statistics.median(walls)
            print(f"{n:>7} {files:>7} {changed:>8} {affected:>9} {med:>9.3f} {min(walls):>7.3f} "
                  f"{statistics.median(cpus):>6.3f} {1000 * med / n:>9.3f}", flush=True)
        finally:
            shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
