//! `airlock ci affected` on real git repositories built here: which stacks a change affects and
//! why (files, nested local modules, var files, renames, deletions, stack blocks,
//! `also_when_changed`), and the clear errors for bad input (malformed airlock.hcl, module
//! cycle, missing stack dir, shallow clone, detached HEAD).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::git_repo::{git, write};
use crate::support::{text, AIRLOCK};

/// A git repository in a temporary directory, with a fixed identity and no user config.
struct Repo {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("repo");
        std::fs::create_dir(&path).unwrap();
        let r = Repo { _tmp: tmp, path };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }

    fn write(&self, rel: &str, content: &str) -> &Repo {
        write(&self.path, rel, content);
        self
    }

    fn rm(&self, rel: &str) -> &Repo {
        self.git(&["rm", "-rq", rel]);
        self
    }

    fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-qm", msg, "--allow-empty"]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// `airlock ci affected ARGS` in `dir`, with no CI variables from the caller's environment.
fn affected_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(AIRLOCK)
        .args(["ci", "affected"])
        .args(args)
        .current_dir(dir)
        .env_remove("GITHUB_BASE_REF")
        .env_remove("CI_MERGE_REQUEST_DIFF_BASE_SHA")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn affected_json(dir: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = affected_in(dir, &a);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = affected_in(dir, args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const BASE_CONFIG: &str = r#"
stack "app" {
  dir               = "stacks/app"
  depends_on        = ["net"]
  also_when_changed = ["shared/*.json"]
}
stack "net" {
  dir = "stacks/net"
}
stack "db" {
  dir = "stacks/db"
}
stack "quiet" {
  dir = "stacks/quiet"
}
stack "edge" {
  dir = "stacks/edge"
}
stack "old" {
  dir = "stacks/old"
}
protect {
  types = ["terraform_data"]
}
"#;

/// The merge base's repository: five live stacks and one that the change deletes, a local
/// module with a nested one, registry and git sources, a var file, a policy, a shared file.
fn base_repo() -> Repo {
    let r = Repo::new();
    r.write("airlock.hcl", BASE_CONFIG)
        .write(
            "stacks/app/main.tf",
            "module \"base\" {\n  source = \"../../modules/base\"\n}\n",
        )
        .write(
            "modules/base/main.tf",
            "module \"nested\" {\n  source = \"./nested\"\n}\n",
        )
        .write(
            "modules/base/nested/main.tf",
            "resource \"terraform_data\" \"n\" {\n  input = 1\n}\n",
        )
        .write(
            "stacks/net/network.tf",
            "resource \"terraform_data\" \"vpc\" {}\n",
        )
        .write(
            "stacks/db/main.tf",
            "module \"r\" {\n  source = \"terraform-aws-modules/rds/aws\"\n}\nmodule \"g\" {\n  \
             source = \"git::https://example.com/m.git\"\n}\nvariable \"size\" {}\n",
        )
        .write("stacks/db/prod.tfvars", "size = 1\n")
        .write(
            "stacks/quiet/main.tf",
            "resource \"terraform_data\" \"q\" {}\n",
        )
        .write(
            "stacks/edge/main.tf",
            "resource \"terraform_data\" \"e\" {}\n",
        )
        .write(
            "stacks/old/main.tf",
            "resource \"terraform_data\" \"o\" {}\n",
        )
        .write("policy/deny.rego", "package main\n")
        .write("shared/settings.json", "{}\n")
        .write("README.md", "infra\n");
    r.commit("base");
    r
}

#[test]
fn change_detection_is_exact_with_reasons() {
    let r = base_repo();
    let fork = r.git(&["rev-parse", "HEAD"]);
    r.git(&["checkout", "-qb", "feature"]);
    // The change: a nested module edit, a var file, a rename, a deleted stack, a stack block
    // edit, a shared file under also_when_changed, airlock.hcl rules, a policy, a README; and
    // the quiet stack's block only reformatted (same settings: not affected).
    let config = BASE_CONFIG
        .replace("stack \"old\" {\n  dir = \"stacks/old\"\n}\n", "")
        .replace(
            "stack \"edge\" {\n  dir = \"stacks/edge\"\n}",
            "stack \"edge\" {\n  dir        = \"stacks/edge\"\n  production = true\n}",
        )
        .replace(
            "stack \"quiet\" {\n  dir = \"stacks/quiet\"\n}",
            "# quiet, reformatted\nstack \"quiet\" { dir = \"stacks/quiet\" }",
        )
        .replace("types = [\"terraform_data\"]", "types = []");
    r.write("airlock.hcl", &config)
        .write(
            "modules/base/nested/main.tf",
            "resource \"terraform_data\" \"n\" {\n  input = 2\n}\n",
        )
        .write("stacks/db/prod.tfvars", "size = 2\n")
        .write("shared/settings.json", "{\"x\": 1}\n")
        .write("policy/deny.rego", "package main\n# stricter\n")
        .write("README.md", "infra, documented\n")
        .rm("stacks/old");
    r.git(&["mv", "stacks/net/network.tf", "stacks/net/vpc.tf"]);
    let head = r.commit("change");
    // Meanwhile main moved on: the quiet stack changed there, which is not this change's.
    r.git(&["checkout", "-q", "main"]);
    r.write(
        "stacks/quiet/main.tf",
        "resource \"terraform_data\" \"q2\" {}\n",
    );
    r.commit("main moves on");
    r.git(&["checkout", "-q", "feature"]);

    let got = affected_json(&r.path, &["--base", "main"]);
    let want = json!({
        "base": fork,
        "head": head,
        "stacks": [
            {"name": "net", "dir": "stacks/net", "destroy": false, "reasons": [
                {"kind": "file", "path": "stacks/net/network.tf"},
                {"kind": "file", "path": "stacks/net/vpc.tf"},
            ]},
            {"name": "app", "dir": "stacks/app", "destroy": false, "reasons": [
                {"kind": "module", "path": "modules/base/nested/main.tf",
                 "via": ["modules/base", "modules/base/nested"]},
                {"kind": "also_when_changed", "glob": "shared/*.json",
                 "path": "shared/settings.json"},
            ]},
            {"name": "db", "dir": "stacks/db", "destroy": false, "reasons": [
                {"kind": "var_file", "path": "stacks/db/prod.tfvars"},
            ]},
            {"name": "edge", "dir": "stacks/edge", "destroy": false, "reasons": [
                {"kind": "stack_block"},
            ]},
        ],
        "removed": [{"name": "old", "dir": "stacks/old", "declared": false}],
        "notes": [
            "airlock.hcl changed outside stack blocks (protect, allow_destroy, credentials, \
             mass_destruction): this affects no stack by itself; the next plan of each stack is \
             judged by it",
            "policy/deny.rego changed: policies judge every plan, but a policy change affects no \
             stack by itself; the next plan of each stack is judged by it",
        ],
    });
    assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());

    // The text says the same in words, the removal first.
    let out = affected_in(&r.path, &["--base", "main"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout).replace(&fork[..12], "BASE");
    let t = t.replace(&head[..12], "HEAD");
    assert_eq!(
        t,
        "Changes from BASE (merge base of main and HEAD) to HEAD: 4 stack(s) affected, 1 removed.

THIS REMOVES STACK old (its directory stacks/old is deleted).
  Nothing is destroyed: its resources keep existing and its state stays on the server. To \
destroy them, restore the directory, set destroy = true in its stack block, have that destroy \
reviewed and applied, then delete the directory.

net (stacks/net)
  - stacks/net/network.tf changed
  - stacks/net/vpc.tf changed

app (stacks/app)
  - modules/base/nested/main.tf changed, in module modules/base -> modules/base/nested
  - shared/settings.json changed, which matches also_when_changed \"shared/*.json\"

db (stacks/db)
  - variable file stacks/db/prod.tfvars changed

edge (stacks/edge)
  - its stack block in airlock.hcl changed

Notes:
  - airlock.hcl changed outside stack blocks (protect, allow_destroy, credentials, \
mass_destruction): this affects no stack by itself; the next plan of each stack is judged by it
  - policy/deny.rego changed: policies judge every plan, but a policy change affects no stack by \
itself; the next plan of each stack is judged by it
"
    );

    // From a subdirectory, and with the head named explicitly: the same set.
    let again = affected_json(
        &r.path.join("stacks/app"),
        &["--base", "main", "--head", "feature"],
    );
    assert_eq!(again, want);
    // No change: nothing affected.
    let none = affected_json(&r.path, &["--base", "feature"]);
    assert_eq!(none["stacks"], json!([]));
    assert_eq!(none["removed"], json!([]));
}

#[test]
fn declared_destroy_then_removal() {
    let r = base_repo();
    // First change: declare the removal of "old". Its directory stays; it is planned with
    // -destroy.
    r.git(&["checkout", "-qb", "declare"]);
    r.write(
        "airlock.hcl",
        &BASE_CONFIG.replace(
            "dir = \"stacks/old\"\n",
            "dir     = \"stacks/old\"\n  destroy = true\n",
        ),
    );
    r.commit("declare the removal of old");
    r.git(&["tag", "declared"]);
    let got = affected_json(&r.path, &["--base", "main"]);
    assert_eq!(
        got["stacks"],
        json!([{"name": "old", "dir": "stacks/old", "destroy": true,
                "reasons": [{"kind": "stack_block"}]}])
    );
    // Deleting the directory while destroy = true stays is refused: a destroy needs the code.
    r.rm("stacks/old");
    r.commit("delete too early");
    let e = fails(&r.path, &["--base", "declared"]);
    assert!(
        e.contains(
            "stack \"old\" declares destroy = true but this change deletes its directory \
             stacks/old; a destroy is planned from the stack's code: keep the directory until \
             the destroy is applied"
        ),
        "{e}"
    );
    // After the destroy was applied, a later change deletes the directory and the block: the
    // removal is reported as declared.
    r.write(
        "airlock.hcl",
        BASE_CONFIG
            .replace("stack \"old\" {\n  dir = \"stacks/old\"\n}\n", "")
            .as_str(),
    );
    r.commit("remove old");
    let got = affected_json(&r.path, &["--base", "declared"]);
    assert_eq!(
        got["removed"],
        json!([{"name": "old", "dir": "stacks/old", "declared": true}])
    );
    assert_eq!(got["stacks"], json!([]));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let r = base_repo();
    r.git(&["checkout", "-qb", "bad"]);

    // A malformed airlock.hcl at head names the file, the commit and the line.
    r.write("airlock.hcl", "stack \"app\" {\n  dri = \"x\"\n}\n");
    let head = r.commit("typo");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains(&format!(
            "airlock.hcl (commit {}):2: unknown attribute `dri`",
            &head[..12]
        )),
        "{e}"
    );
    // depends_on naming no stack, and a depends_on cycle.
    r.write(
        "airlock.hcl",
        "stack \"a\" {\n  dir = \"stacks/app\"\n  depends_on = [\"nope\"]\n}\n",
    );
    r.commit("unknown dependency");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains(":1: stack \"a\" depends_on \"nope\", which is not a stack block"),
        "{e}"
    );
    r.write(
        "airlock.hcl",
        "stack \"a\" {\n  dir = \"stacks/app\"\n  depends_on = [\"b\"]\n}\n\
         stack \"b\" {\n  dir = \"stacks/net\"\n  depends_on = [\"a\"]\n}\n",
    );
    r.commit("cycle");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains(":1: depends_on forms a cycle: a -> b -> a"),
        "{e}"
    );

    // A module cycle names the cycle.
    r.write("airlock.hcl", BASE_CONFIG).write(
        "modules/base/nested/main.tf",
        "module \"back\" {\n  source = \"../\"\n}\n",
    );
    r.commit("module cycle");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains(
            "stack \"app\": modules/base/nested/main.tf:2: module cycle: modules/base -> \
             modules/base/nested -> modules/base"
        ),
        "{e}"
    );
    // A module source leaving the repository root.
    r.write(
        "modules/base/nested/main.tf",
        "module \"out\" {\n  source = \"../../../../elsewhere\"\n}\n",
    );
    r.commit("escape");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(e.contains("stack \"app\": modules/base/nested/main.tf:2: module source \"../../../../elsewhere\" leaves the repository root"), "{e}");
    // A module directory reached through a symbolic link (git stores the link, not the files):
    // refused alike here and by `airlock plan`'s input files.
    r.write(
        "modules/base/nested/main.tf",
        "module \"l\" {\n  source = \"../../../linked\"\n}\n",
    );
    std::os::unix::fs::symlink("modules/base", r.path.join("linked")).unwrap();
    r.commit("symlinked module");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains(
            "stack \"app\": modules/base/nested/main.tf:2: module directory linked: linked is a \
             symbolic link, which airlock does not follow"
        ),
        "{e}"
    );
    r.rm("linked");
    // A module in a git submodule: the commit names the submodule's commit, not its files.
    let sub = r._tmp.path().join("modrepo");
    std::fs::create_dir(&sub).unwrap();
    git(&sub, &["init", "-q", "-b", "main"]);
    std::fs::write(sub.join("main.tf"), "").unwrap();
    git(&sub, &["add", "-A"]);
    git(&sub, &["commit", "-qm", "m"]);
    r.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        sub.to_str().unwrap(),
        "vendor/mod",
    ]);
    r.write(
        "modules/base/nested/main.tf",
        "module \"v\" {\n  source = \"../../../vendor/mod\"\n}\n",
    );
    r.commit("submodule");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains(
            "stack \"app\": modules/base/nested/main.tf:2: module directory vendor/mod: \
             vendor/mod is a git submodule, whose files change detection cannot read"
        ),
        "{e}"
    );
    r.write("modules/base/nested/main.tf", "");
    r.rm("vendor/mod");
    // A symbolic link among a stack's files that airlock cannot follow: refused, naming it
    // (`airlock plan` refuses it alike; a link to a file inside the root is followed).
    std::os::unix::fs::symlink("/etc/passwd", r.path.join("stacks/app/passwd.txt")).unwrap();
    r.commit("a link out of the repository");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains(
            "stack \"app\": stacks/app/passwd.txt: a symbolic link to \"/etc/passwd\", an \
             absolute path; airlock follows a link only to a file inside the repository root"
        ),
        "{e}"
    );
    r.rm("stacks/app/passwd.txt");
    // A committed .terraform directory: left out of a checkout's inputs, so refused in a commit
    // (a file there read with file() would be unreviewed).
    r.write("stacks/app/.terraform/payload.txt", "unreviewed");
    r.commit("commit .terraform");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains("stack \"app\": stacks/app/.terraform: committed"),
        "{e}"
    );
    r.rm("stacks/app/.terraform");
    // A stack dir that does not exist (and never did).
    r.write("modules/base/nested/main.tf", "").write(
        "airlock.hcl",
        &format!("{BASE_CONFIG}stack \"ghost\" {{\n  dir = \"stacks/ghost\"\n}}\n"),
    );
    r.commit("ghost");
    let e = fails(&r.path, &["--base", "main"]);
    assert!(
        e.contains(
            "stack \"ghost\": its dir \"stacks/ghost\" does not exist in the head commit; fix \
             `dir` in airlock.hcl, or remove the stack block"
        ),
        "{e}"
    );
    // An unknown base ref.
    let e = fails(&r.path, &["--base", "origin/nope"]);
    assert!(
        e.contains("the base ref \"origin/nope\" is not a commit of this clone; fetch it"),
        "{e}"
    );
    let e = fails(&r.path, &["--base=--upload-pack=x"]);
    assert!(e.contains("is not a commit of this clone"), "{e}");

    // Outside a git repository, and without airlock.hcl.
    let plain = tempfile::tempdir().unwrap();
    std::fs::write(plain.path().join("airlock.hcl"), "").unwrap();
    let e = fails(plain.path(), &["--base", "main"]);
    assert!(e.contains("is not inside a git repository"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = fails(empty.path(), &["--base", "main"]);
    assert!(e.contains("no airlock.hcl in"), "{e}");
}

#[test]
fn shallow_clone_and_detached_head() {
    let r = base_repo();
    r.git(&["checkout", "-qb", "feature"]);
    r.write("stacks/db/prod.tfvars", "size = 3\n");
    r.commit("feature");
    r.git(&["checkout", "-q", "main"]);
    r.write("README.md", "main moves on\n");
    r.commit("main");

    // A depth-1 clone (CI's default) has both tips but not their merge base.
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", r.path.display());
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            "--no-single-branch",
            "-b",
            "feature",
            &url,
            "c",
        ],
    );
    let clone = tmp.path().join("c");
    let e = fails(&clone, &["--base", "origin/main"]);
    assert!(
        e.contains("because it is shallow; fetch the whole history: set fetch-depth: 0"),
        "{e}"
    );
    // With the whole history it works.
    git(&clone, &["fetch", "-q", "--unshallow"]);
    let got = affected_json(&clone, &["--base", "origin/main"]);
    assert_eq!(got["stacks"][0]["name"], "db");

    // A detached HEAD (as CI checks out) works with a base, and says what to do without one.
    r.git(&["checkout", "-q", "--detach", "feature"]);
    let got = affected_json(&r.path, &["--base", "main"]);
    assert_eq!(got["stacks"][0]["name"], "db");
    let e = fails(&r.path, &[]);
    assert!(
        e.contains("HEAD is detached (as in a CI checkout) and the base is unknown"),
        "{e}"
    );
    assert!(e.contains("--base origin/main"), "{e}");
    // In a clone, the remote's default branch is the default base.
    let got = affected_json(&clone, &[]);
    assert_eq!(got["stacks"][0]["name"], "db");
}
