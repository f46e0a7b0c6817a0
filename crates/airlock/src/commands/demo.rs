//! `airlock demo incident [--without-airlock]`: the incident airlock exists for, replayed step
//! by step on the local test cloud (`crates/airlock-testcloud`, a real Terraform provider
//! installed as `hashicorp/aws` from a filesystem mirror) in a temporary directory. With
//! airlock, a server is started and every destructive step is stopped; without, the same steps
//! run against a local backend and destroy everything, the database's backups included. Exit
//! 0 only when every step ended as expected. Only `terraform` (on PATH) and the provider
//! binary are needed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

const STACK: &str = "prod/app";
const PROVIDER_VERSION: &str = "5.0.0";

const PROVIDER_TF: &str = "terraform {\n  required_providers {\n    aws = { source = \"hashicorp/aws\" }\n  }\n}\nprovider \"aws\" {}\n";

/// Production as it was on the day: nothing turned on deletion protection; the database keeps
/// seven days of automated backups (which AWS deletes with it by default).
const PRODUCTION_TF: &str = r#"
resource "aws_vpc" "main" {
  cidr_block = "10.0.0.0/16"
  tags       = { Name = "prod" }
}
resource "aws_subnet" "a" {
  vpc_id     = aws_vpc.main.id
  cidr_block = "10.0.1.0/24"
}
resource "aws_ecs_cluster" "app" {
  name = "prod"
}
resource "aws_lb" "web" {
  name    = "prod-web"
  subnets = [aws_subnet.a.id]
}
resource "aws_instance" "bastion" {
  ami           = "ami-0abc1234"
  instance_type = "t3.micro"
  subnet_id     = aws_subnet.a.id
}
resource "aws_db_instance" "main" {
  identifier              = "prod-db"
  engine                  = "postgres"
  instance_class          = "db.t3.micro"
  skip_final_snapshot     = true
  backup_retention_period = 7
}
resource "aws_s3_bucket" "assets" {
  bucket = "prod-assets"
}
"#;

/// Removed when the demo ends, unless `--keep`.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The server the demo started; stopped when the demo ends.
struct Server {
    child: Child,
    url: String,
    admin: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Demo {
    dir: PathBuf,
    exe: PathBuf,
    tf_env: Vec<(String, String)>,
    failures: usize,
    step: usize,
}

impl Demo {
    fn step(&mut self, title: &str) {
        self.step += 1;
        println!("\n{}. {title}", self.step);
    }

    /// Reports how a step ended; counts it when not as expected.
    fn outcome(&mut self, as_expected: bool, what: &str) {
        if as_expected {
            println!("   ok: {what}");
        } else {
            self.failures += 1;
            println!("   UNEXPECTED: {what}");
        }
    }

    fn terraform(
        &self,
        dir: &Path,
        password: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let mut cmd = Command::new("terraform");
        cmd.args(args)
            .current_dir(dir)
            .envs(self.tf_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(p) = password {
            cmd.env("TF_HTTP_USERNAME", "airlock")
                .env("TF_HTTP_PASSWORD", p)
                .env("TF_HTTP_RETRY_MAX", "0");
        }
        cmd.output().context("running terraform")
    }

    /// terraform that must succeed.
    fn terraform_ok(
        &self,
        dir: &Path,
        password: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let out = self.terraform(dir, password, args)?;
        if !out.status.success() {
            bail!("terraform {} failed:\n{}", args.join(" "), both(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn airlock(
        &self,
        server: &Server,
        token: &str,
        dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        Command::new(&self.exe)
            .args(args)
            .current_dir(dir)
            .env("AIRLOCK_URL", &server.url)
            .env("AIRLOCK_TOKEN", token)
            .envs(self.tf_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .context("running airlock")
    }

    fn airlock_ok(&self, server: &Server, token: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.airlock(server, token, &self.dir, args)?;
        if !out.status.success() {
            bail!("airlock {} failed:\n{}", args.join(" "), both(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A working directory with `main_tf` after the provider block, and `extra` files.
    fn workdir(
        &self,
        name: &str,
        main_tf: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("main.tf"), format!("{PROVIDER_TF}{main_tf}"))?;
        for (file, text) in extra {
            std::fs::write(dir.join(file), text)?;
        }
        Ok(dir)
    }

    /// Every object the cloud holds, as "TYPE ID" (sorted).
    fn inventory(&self) -> anyhow::Result<Vec<String>> {
        let cloud = self.dir.join("cloud");
        let mut out = Vec::new();
        let Ok(kinds) = std::fs::read_dir(&cloud) else {
            return Ok(out);
        };
        for kind in kinds {
            let kind = kind?;
            for obj in std::fs::read_dir(kind.path())? {
                let obj = obj?;
                let name = obj.file_name().to_string_lossy().into_owned();
                if name.ends_with(".json") && !name.starts_with('.') {
                    let v: Value = serde_json::from_slice(&std::fs::read(obj.path())?)?;
                    out.push(format!(
                        "{} {}",
                        kind.file_name().to_string_lossy(),
                        v["id"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn both(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Without terminal colours (some terraform subcommands have no -no-color).
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first error line terraform or airlock printed (why a step was stopped).
fn why(o: &Output) -> String {
    let text = both(o);
    text.lines()
        .map(str::trim)
        .map(|l| l.trim_start_matches('│').trim())
        .filter(|l| !l.is_empty())
        .fold(None, |found: Option<&str>, l| match found {
            Some(f) if f.starts_with("Error") || f.starts_with("error") => Some(f),
            _ => Some(l),
        })
        .unwrap_or("no output")
        .chars()
        .take(300)
        .collect()
}

/// The test cloud provider: `$AIRLOCK_TESTCLOUD_PROVIDER`, else next to this executable.
fn provider() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("AIRLOCK_TESTCLOUD_PROVIDER").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("terraform-provider-aws"),
    };
    if !path.is_file() {
        bail!(
            "the local test cloud provider was not found at {}: build it with `cargo build -p airlock-testcloud` (it lands next to the airlock binary), or set AIRLOCK_TESTCLOUD_PROVIDER to its path",
            path.display()
        );
    }
    Ok(path)
}

pub fn incident(without_airlock: bool, keep: bool) -> anyhow::Result<ExitCode> {
    match Command::new("terraform").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => {}
        _ => bail!("`terraform` was not found on PATH (or does not run): the demo drives the real Terraform"),
    }
    let provider = provider()?;
    let tmp = TempDir {
        path: std::env::temp_dir().join(airlock_server::tokens::random_id("airlock-demo-")),
        keep,
    };
    let dir = tmp.path.clone();
    let pkg = dir.join(format!(
        "mirror/registry.terraform.io/hashicorp/aws/{PROVIDER_VERSION}/linux_amd64"
    ));
    std::fs::create_dir_all(&pkg)?;
    std::fs::copy(
        &provider,
        pkg.join(format!("terraform-provider-aws_v{PROVIDER_VERSION}")),
    )
    .with_context(|| format!("copying {}", provider.display()))?;
    let rc = dir.join("terraformrc");
    std::fs::write(
        &rc,
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/hashicorp/aws\"]\n  }}\n}}\n",
            dir.join("mirror").display()
        ),
    )?;
    let rc = rc.display().to_string();
    let tf_env = vec![
        ("CHECKPOINT_DISABLE".to_string(), "1".to_string()),
        ("TF_IN_AUTOMATION".into(), "1".into()),
        ("TF_INPUT".into(), "0".into()),
        ("TF_CLI_CONFIG_FILE".into(), rc.clone()),
        // The plan phase's CLI configuration (airlock_runner::cli_config): the operator's opt-in.
        ("AIRLOCK_TF_CLI_CONFIG".into(), rc),
        (
            "AIRLOCK_TESTCLOUD_DIR".into(),
            dir.join("cloud").display().to_string(),
        ),
    ];
    let mut demo = Demo {
        dir: dir.clone(),
        exe: std::env::current_exe()?,
        tf_env,
        failures: 0,
        step: 0,
    };
    println!(
        "airlock demo incident{}: a production stack on a local test cloud (in {}), then the incident, step by step.",
        if without_airlock { " --without-airlock" } else { "" },
        dir.display()
    );
    if without_airlock {
        without(&mut demo)?;
    } else {
        with(&mut demo)?;
    }
    println!();
    if keep {
        println!("(kept {})", dir.display());
    }
    if demo.failures == 0 {
        println!("Every step ended as expected.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} step(s) did NOT end as expected.", demo.failures);
        Ok(ExitCode::from(crate::exit::ERROR))
    }
}

/// The incident with a local backend: nothing stands between the old archive and the cloud.
fn without(demo: &mut Demo) -> anyhow::Result<()> {
    demo.step("The platform team builds production (local state on their machine)");
    let platform = demo.workdir("platform", PRODUCTION_TF, &[])?;
    demo.terraform_ok(&platform, None, &["init", "-input=false", "-no-color"])?;
    demo.terraform_ok(&platform, None, &["apply", "-auto-approve", "-no-color"])?;
    let archive = std::fs::read(platform.join("terraform.tfstate"))?;
    let production = demo.inventory()?;
    demo.outcome(production.len() == 8, &format!("{} cloud objects, the database's automated backups among them; the state file is archived", production.len()));

    demo.step("A new machine with no local state plans the same code");
    let laptop = demo.workdir("laptop", PRODUCTION_TF, &[])?;
    demo.terraform_ok(&laptop, None, &["init", "-input=false", "-no-color"])?;
    let plan = demo.terraform_ok(&laptop, None, &["plan", "-no-color"])?;
    demo.outcome(
        plan.contains("7 to add"),
        "Terraform would create production a second time: it knows nothing of what exists",
    );

    demo.step("The old state archive is unpacked on the new machine");
    std::fs::write(laptop.join("terraform.tfstate"), &archive)?;
    demo.outcome(
        true,
        "nothing checks where a state file comes from or whether it is current",
    );

    demo.step("`terraform destroy` (to \"clean up the duplicates\")");
    let out = demo.terraform(&laptop, None, &["destroy", "-auto-approve", "-no-color"])?;
    let left = demo.inventory()?;
    demo.outcome(
        out.status.success() && left.is_empty(),
        &format!("destroyed: VPC, subnet, cluster, load balancer, bastion, database, bucket; {} object(s) left", left.len()),
    );
    demo.outcome(
        !left.iter().any(|o| o.starts_with("rds_automated_backup")),
        "the database's automated backups were deleted with it (delete_automated_backups defaults to true): nothing to restore from",
    );
    println!("\nWithout airlock, one command on one machine destroyed production and its backups. Run `airlock demo incident` to see the same steps stopped.");
    Ok(())
}

/// The incident with airlock: the state lives on the server, and the agent can only propose.
fn with(demo: &mut Demo) -> anyhow::Result<()> {
    demo.step("Start an airlock server; create the stack, an agent token and an approver");
    let server = start_server(&demo.dir, &demo.exe)?;
    demo.airlock_ok(&server, &server.admin, &["stack", "create", STACK])?;
    let token = |name: &str, role: &str| -> anyhow::Result<String> {
        let mut args = vec![
            "token", "create", "--name", name, "--role", role, "--format", "json",
        ];
        if role == "approver" {
            demo.airlock_ok(&server, &server.admin, &["user", "create", name])?;
            args.extend(["--user", name]);
        }
        let v: Value = serde_json::from_str(&demo.airlock_ok(&server, &server.admin, &args)?)?;
        v["secret"]
            .as_str()
            .map(str::to_string)
            .context("no token secret")
    };
    let agent = token("agent", "agent")?;
    let approver = token("alice", "approver")?;
    let backend = demo.airlock_ok(&server, &server.admin, &["backend-config", STACK])?;
    demo.outcome(true, &format!("server at {}", server.url));

    demo.step("The platform team builds production (state on the airlock server)");
    let platform = demo.workdir("platform", PRODUCTION_TF, &[("backend.tf", &backend)])?;
    demo.terraform_ok(
        &platform,
        Some(&server.admin),
        &["init", "-input=false", "-no-color"],
    )?;
    demo.terraform_ok(
        &platform,
        Some(&server.admin),
        &["apply", "-auto-approve", "-no-color"],
    )?;
    let archive = demo.terraform_ok(&platform, Some(&server.admin), &["state", "pull"])?;
    // Production moves on after the archive was taken.
    let later = PRODUCTION_TF.replace(
        "tags       = { Name = \"prod\" }",
        "tags       = { Name = \"prod\", Team = \"platform\" }",
    );
    std::fs::write(platform.join("main.tf"), format!("{PROVIDER_TF}{later}"))?;
    demo.terraform_ok(
        &platform,
        Some(&server.admin),
        &["apply", "-auto-approve", "-no-color"],
    )?;
    let production = demo.inventory()?;
    let history = versions(demo, &server)?;
    demo.outcome(
        production.len() == 8,
        &format!("{} cloud objects, the database's automated backups among them; {} state versions; an older state archived", production.len(), history.len()),
    );

    demo.step(
        "A new machine with no local state, holding only the agent's token, plans the same code",
    );
    let laptop = demo.workdir("laptop", &later, &[("backend.tf", &backend)])?;
    demo.terraform_ok(
        &laptop,
        Some(&agent),
        &["init", "-input=false", "-no-color"],
    )?;
    let plan = demo.terraform_ok(&laptop, Some(&agent), &["plan", "-no-color"])?;
    demo.outcome(
        plan.contains("No changes"),
        "no changes: the state is on the server, so the new machine sees production as it is",
    );

    demo.step(
        "The old state archive is pushed over the current state (`terraform state push -force`)",
    );
    std::fs::write(laptop.join("old.tfstate"), &archive)?;
    let out = demo.terraform(
        &laptop,
        Some(&agent),
        &["state", "push", "-force", "old.tfstate"],
    )?;
    demo.outcome(
        !out.status.success(),
        &format!("stopped: an agent token cannot write state ({})", why(&out)),
    );

    demo.step("`terraform destroy` with the agent's token");
    let out = demo.terraform(
        &laptop,
        Some(&agent),
        &["destroy", "-auto-approve", "-no-color"],
    )?;
    demo.outcome(
        !out.status.success() && demo.inventory()? == production,
        &format!("stopped before the provider deleted anything: the state lock is refused to agents ({})", why(&out)),
    );

    demo.step("A \"cleanup\" proposal: tags on everything, a bigger bastion, and the database quietly removed");
    let start = later
        .find("resource \"aws_db_instance\"")
        .context("the database block")?;
    let end = start
        + later[start..]
            .find("\n}\n")
            .context("the database block's end")?
        + 3;
    let cleanup = format!("{}{}", &later[..start], &later[end..])
        .replace(
            "name = \"prod\"\n",
            "name = \"prod\"\n  tags = { Owner = \"platform\" }\n",
        )
        .replace(
            "instance_type = \"t3.micro\"",
            "instance_type = \"t3.small\"",
        );
    std::fs::write(laptop.join("main.tf"), format!("{PROVIDER_TF}{cleanup}"))?;
    let out = demo.airlock(
        &server,
        &agent,
        &laptop,
        &["plan", ".", "--stack", STACK, "--format", "json"],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let run = v["run"]["id"].as_str().unwrap_or_default().to_string();
    let decision = v["run"]["decision"].as_str().unwrap_or("?").to_string();
    demo.outcome(
        decision == "deny",
        &format!("airlock's plan gate decided: {decision}"),
    );
    if !run.is_empty() {
        let shown = demo.airlock(&server, &approver, &demo.dir, &["run", "show", &run])?;
        for line in String::from_utf8_lossy(&shown.stdout)
            .lines()
            .filter(|l| l.contains("aws_db_instance") && l.trim_start().starts_with('['))
        {
            println!("   gate: {}", line.trim());
        }
        let out = demo.airlock(
            &server,
            &approver,
            &demo.dir,
            &["approve", &run, "--confirm-destroy", "1"],
        )?;
        demo.outcome(
            !out.status.success(),
            &format!("an approver cannot approve it either ({})", why(&out)),
        );
    }

    demo.step("What is left");
    let now = demo.inventory()?;
    demo.outcome(
        now == production,
        &format!(
            "all {} cloud objects are still there, the database's automated backups included",
            now.len()
        ),
    );
    demo.outcome(
        versions(demo, &server)? == history,
        "the stack's state history is intact",
    );
    println!("\nThe agent read and proposed; it never executed. Run `airlock demo incident --without-airlock` to see the same steps without airlock.");
    Ok(())
}

fn versions(demo: &Demo, server: &Server) -> anyhow::Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&demo.airlock_ok(
        server,
        &server.admin,
        &["state", "history", STACK, "--format", "json"],
    )?)?;
    Ok(v["versions"].as_array().cloned().unwrap_or_default())
}

/// `airlock server` on a free loopback port, data in the demo's directory.
fn start_server(dir: &Path, exe: &Path) -> anyhow::Result<Server> {
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut child = Command::new(exe)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("server-data"))
        .env_remove("AIRLOCK_DATABASE_URL")
        .env_remove("AIRLOCK_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting airlock server")?;
    let mut stdout = BufReader::new(child.stdout.take().context("the server's output")?);
    let (mut url, mut admin) = (None, None);
    let mut line = String::new();
    while url.is_none() {
        line.clear();
        if stdout.read_line(&mut line)? == 0 {
            let _ = child.kill();
            bail!(
                "airlock server exited before listening (see {})",
                dir.join("server.log").display()
            );
        }
        if let Some(t) = line.strip_prefix("admin token: ") {
            admin = Some(t.trim().to_string());
        }
        if let Some(u) = line.strip_prefix("listening on ") {
            url = Some(u.trim().to_string());
        }
    }
    // The server's further output is not needed; keep the pipe drained.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while stdout.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    Ok(Server {
        child,
        url: url.unwrap_or_default(),
        admin: admin.context("the server printed no admin token")?,
    })
}
