//! The local test cloud (`crates/airlock-testcloud`, a real Terraform provider installed as
//! `hashicorp/aws`) for end-to-end tests: [`TestCloud::new`] builds or locates the provider,
//! installs it in a filesystem mirror, writes a CLI configuration that installs it from there,
//! and gives a fresh cloud directory. Terraform and airlock get it through [`TestCloud::env`]:
//! `TF_CLI_CONFIG_FILE` for terraform itself and `airlock apply`, `AIRLOCK_TF_CLI_CONFIG` for
//! the plan phase (the operator's opt-in, checked by `airlock_runner::cli_config`), and
//! `AIRLOCK_TESTCLOUD_DIR` for the provider.

#![allow(dead_code)]

use crate::support::{text, TestServer, Workspace, AIRLOCK};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The provider's version in the mirror (any version; nothing is published).
pub const VERSION: &str = "5.0.0";

/// The `required_providers` block every configuration on the test cloud starts with.
pub const PROVIDER_TF: &str = "terraform {\n  required_providers {\n    aws = { source = \"hashicorp/aws\" }\n  }\n}\nprovider \"aws\" {}\n";

/// The provider binary: `$AIRLOCK_TESTCLOUD_PROVIDER` (scripts/test.sh builds it and sets
/// it), else built here with `cargo build -p airlock-testcloud` next to the airlock binary.
/// Fails, never skips, when it cannot be had.
pub fn provider_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("AIRLOCK_TESTCLOUD_PROVIDER").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "AIRLOCK_TESTCLOUD_PROVIDER={} does not exist", p.display());
            return p;
        }
        let target = Path::new(AIRLOCK).parent().expect("the airlock binary's directory");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .args(["build", "-p", "airlock-testcloud", "--bin", "terraform-provider-aws"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null());
        if target.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let out = build.output().expect("running cargo to build the test cloud provider");
        assert!(
            out.status.success(),
            "cannot build the local test cloud provider (`cargo build -p airlock-testcloud`; it needs protoc: run scripts/test-deps.sh, or set AIRLOCK_TESTCLOUD_PROVIDER):\n{}",
            text(&out)
        );
        let bin = target.join("terraform-provider-aws");
        assert!(bin.is_file(), "cargo built no {}", bin.display());
        bin
    })
    .clone()
}

/// A cloud of its own, the mirror holding the provider and the CLI configuration using it.
pub struct TestCloud {
    /// The cloud's directory (`DIR/<type>/<id>.json`).
    pub dir: PathBuf,
    /// The Terraform CLI configuration installing `hashicorp/aws` from the mirror only.
    pub rc: PathBuf,
    pub provider: PathBuf,
    tmp: tempfile::TempDir,
}

impl TestCloud {
    pub fn new() -> TestCloud {
        let provider = provider_bin();
        let tmp = tempfile::tempdir().unwrap();
        let mirror = tmp.path().join("mirror");
        let pkg = mirror.join(format!(
            "registry.terraform.io/hashicorp/aws/{VERSION}/linux_amd64"
        ));
        std::fs::create_dir_all(&pkg).unwrap();
        // A copy, not a link: a rebuild during the test must not change what terraform hashed.
        std::fs::copy(
            &provider,
            pkg.join(format!("terraform-provider-aws_v{VERSION}")),
        )
        .unwrap();
        let rc = tmp.path().join("testcloud.tfrc");
        std::fs::write(
            &rc,
            format!(
                "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n}}\n",
                mirror.display()
            ),
        )
        .unwrap();
        let dir = tmp.path().join("cloud");
        std::fs::create_dir_all(&dir).unwrap();
        TestCloud {
            dir,
            rc,
            provider,
            tmp,
        }
    }

    /// The environment terraform and airlock need to use this cloud.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let rc = self.rc.display().to_string();
        vec![
            ("TF_CLI_CONFIG_FILE", rc.clone()),
            ("AIRLOCK_TF_CLI_CONFIG", rc),
            ("AIRLOCK_TESTCLOUD_DIR", self.dir.display().to_string()),
        ]
    }

    /// A workspace on `stack` of `server` whose terraform uses this cloud; `main_tf` after
    /// [`PROVIDER_TF`]. Not yet initialised.
    pub fn workspace(&self, server: &TestServer, stack: &str, main_tf: &str) -> Workspace {
        Workspace::new(server, stack, &format!("{PROVIDER_TF}{main_tf}")).with_env(&self.env())
    }

    /// A working directory with local state (no airlock), `terraform init`ed against this cloud.
    pub fn local_dir(&self, main_tf: &str) -> PathBuf {
        let dir = tempfile::Builder::new()
            .prefix("local-")
            .tempdir_in(self.tmp.path())
            .unwrap()
            .keep();
        std::fs::write(dir.join("main.tf"), format!("{PROVIDER_TF}{main_tf}")).unwrap();
        let out = self.tf(&dir, &["init", "-input=false", "-no-color"]);
        assert!(out.status.success(), "terraform init: {}", text(&out));
        dir
    }

    /// terraform in `dir` on this cloud.
    pub fn tf(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(crate::support::terraform_bin())
            .args(args)
            .current_dir(dir)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The provider's own CLI on this cloud (`cloud list|show|set|delete ...`).
    pub fn cloud_cli(&self, args: &[&str]) -> Output {
        Command::new(&self.provider)
            .arg("cloud")
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Changes one attribute of an object behind Terraform's back (`value` as JSON).
    pub fn set(&self, kind: &str, id: &str, attr: &str, value: &str) {
        let out = self.cloud_cli(&["set", kind, id, attr, value]);
        assert!(out.status.success(), "cloud set: {}", text(&out));
    }

    /// Deletes an object behind Terraform's back.
    pub fn delete(&self, kind: &str, id: &str) {
        let out = self.cloud_cli(&["delete", kind, id]);
        assert!(out.status.success(), "cloud delete: {}", text(&out));
    }

    /// The object the cloud holds, if any.
    pub fn get(&self, kind: &str, id: &str) -> Option<serde_json::Value> {
        let out = self.cloud_cli(&["show", kind, id]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The ids of every object of a type the cloud holds.
    pub fn ids(&self, kind: &str) -> Vec<String> {
        let out = self.cloud_cli(&["list", kind]);
        assert!(out.status.success(), "cloud list: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t').map(|(_, id)| id.to_string()))
            .collect()
    }
}

/// `airlock plan` on this cloud as `token` in `ws`; returns the run id.
pub fn plan_on(
    cloud: &TestCloud,
    t: &crate::support::Team,
    ws: &Workspace,
    token: &str,
    stack: &str,
) -> String {
    let env = cloud.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = crate::support::cli_in(
        &t.s,
        token,
        &ws.dir,
        &["plan", ".", "--stack", stack, "--format", "json"],
        &env,
    );
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "plan failed: {}",
        text(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("plan output: {}", text(&out)));
    v["run"]["id"].as_str().unwrap().to_owned()
}

/// `airlock apply RUN` on this cloud as `token`, from `dir` (the checkout's root or the stack's).
pub fn apply_on(
    cloud: &TestCloud,
    t: &crate::support::Team,
    dir: &Path,
    token: &str,
    run: &str,
) -> Output {
    let env = cloud.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    crate::support::cli_in(&t.s, token, dir, &["apply", run], &env)
}

impl TestCloud {
    /// Every object the cloud holds, as `TYPE ID` lines (sorted): to show nothing changed.
    pub fn inventory(&self) -> Vec<String> {
        let out = self.cloud_cli(&["list"]);
        assert!(out.status.success(), "cloud list: {}", text(&out));
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }
}
