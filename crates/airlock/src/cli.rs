//! Command-line definitions (clap types only). Every subcommand's flags live here so help text
//! is generated from one place; behaviour lives in `commands/<noun>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// airlock: a state server, plan gate and governed runs for Terraform and OpenTofu.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the airlock server (state backend and API).
    Server(ServerArgs),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create and list users, the people tokens belong to (admin).
    #[command(subcommand)]
    User(UserCommand),
    /// Create, inspect and protect stacks.
    #[command(subcommand)]
    Stack(StackCommand),
    /// Server-side Rego policy sets per stack glob, which a repository cannot weaken (admin).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the `backend "http"` block that points Terraform at a stack (`--format json`: a
    /// `backend.tf.json` document).
    BackendConfig(BackendConfigArgs),
    /// Read, compare, restore and verify state history.
    #[command(subcommand)]
    State(StateCommand),
    /// List audit events (newest first, filtered), or verify the audit hash chain.
    Audit(AuditArgs),
    /// Why did the server refuse the last request on a stack? Terraform shows only a status
    /// code ("HTTP error: 403"); this prints the latest refusal with its reason and actor.
    Why(WhyArgs),
    /// Show who the configured token belongs to.
    Whoami(ClientArgs),
    /// Check a plan for destructive or dangerous changes and apply policy.
    Check(CheckArgs),
    /// Plan a stack with plan-phase credentials and upload the run for review.
    Plan(PlanArgs),
    /// List runs, newest first; filter by stack, status, author or commit.
    Runs(RunsArgs),
    /// Show or withdraw a run.
    #[command(subcommand)]
    Run(RunCommand),
    /// Approve a run (approvers; never one's own).
    Approve(ApproveArgs),
    /// Reject a run.
    Reject(RejectArgs),
    /// Apply exactly the approved plan of a run (CI).
    Apply(ApplyArgs),
    /// The pull-request workflow: which stacks a change affects, plan them on the pull request
    /// with one sticky comment and a status per stack, apply the reviewed runs after merge.
    #[command(subcommand)]
    Ci(CiCommand),
    /// Serve the Model Context Protocol over stdio for AI agents: read, plan and propose; no
    /// tool executes, approves or writes.
    Mcp(McpArgs),
    /// Install the agent guard: a `terraform` shim that allows read-only subcommands only.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// Export, verify and import full backups (works on the database directly).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Check a stack for drift: a refresh-only plan with plan-phase credentials (it never
    /// writes), reported to the server. Exit 0 in sync, 3 drifted, 1 unknown, 2 skipped (locked).
    Drift(DriftArgs),
    /// airlock's OIDC issuer: rotate its signing key (admin of all stacks).
    #[command(subcommand)]
    Oidc(OidcCommand),
    /// Forge OIDC issuers whose CI jobs may log in without a stored secret (admin).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Exchange this CI job's OIDC ID token (GitHub Actions, GitLab CI) for a short-lived airlock
    /// token; prints the token (or, with --github-env, masks it and writes AIRLOCK_TOKEN to
    /// $GITHUB_ENV).
    Login(LoginArgs),
    /// Answer the six questions every Terraform team should be able to answer (where state
    /// lives, who can apply, plan to apply, visibility, protections, backups) from a repository
    /// (read, never executed) and, with --server, from the airlock server.
    Doctor(DoctorArgs),
    /// Walk through an incident on a local test cloud, with and without airlock.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// (internal) Evaluate one job of a repository's Rego, read from stdin, within bounded
    /// memory and CPU: the server runs every upload's repository policies this way.
    #[command(name = "__rego-eval", hide = true)]
    RegoEval,
}

#[derive(Debug, Subcommand)]
pub enum OidcCommand {
    /// A new signing key; the old one signs nothing more and stays in the JWKS until the tokens
    /// it signed have expired.
    Rotate(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust one repository's CI jobs of a forge: their ID tokens are exchanged for an airlock
    /// token of ROLE (ci needs --ref; a pull-request job gets at most agent).
    Add {
        /// github or gitlab.
        forge: String,
        /// The repository (GitHub `org/repo`, GitLab project path), exact.
        #[arg(long)]
        repository: String,
        /// The repository's immutable id: GitHub `repository_id` (`gh api repos/ORG/REPO --jq
        /// .id`), GitLab `project_id`. A repository re-created at the same path has another.
        #[arg(long)]
        repository_id: String,
        /// Its owner's immutable id: GitHub `repository_owner_id` (`.owner.id`), GitLab
        /// `namespace_id`.
        #[arg(long)]
        owner_id: String,
        /// The ref the job must run on, exact (refs/heads/main); required for --role ci.
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// The deployment environment the job must run in, exact.
        #[arg(long)]
        environment: Option<String>,
        /// ci, agent or reader.
        #[arg(long)]
        role: String,
        /// Stack glob of the issued token; repeatable (none: all stacks).
        #[arg(long = "stack")]
        stacks: Vec<String>,
        /// The forge's issuer URL (default: GitHub's or gitlab.com's).
        #[arg(long)]
        issuer: Option<String>,
        /// The audience the job's token must carry (default: the server's --public-url).
        #[arg(long)]
        audience: Option<String>,
        /// Lifetime of the issued token (default 1h, at most 6h).
        #[arg(long)]
        lifetime: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List trusts, removed ones included.
    List(ClientArgs),
    /// Stop trusting (kept, with who removed it); the tokens it issued are revoked.
    Remove {
        /// The trust's id (trust_…).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Pin a trust added before trusts were pinned to the repository's ids (until then it
    /// matches no job). Once: other ids are another repository, so another trust.
    Pin {
        /// The trust's id (trust_…).
        id: String,
        /// The repository's immutable id (GitHub `repository_id`, GitLab `project_id`).
        #[arg(long)]
        repository_id: String,
        /// Its owner's immutable id (GitHub `repository_owner_id`, GitLab `namespace_id`).
        #[arg(long)]
        owner_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Use the CI job's OIDC ID token (the only login there is).
    #[arg(long)]
    pub oidc: bool,
    /// The role to ask for (default: the most the matching trust gives).
    #[arg(long)]
    pub role: Option<String>,
    /// The audience to ask GitHub for (default: the server URL).
    #[arg(long)]
    pub audience: Option<String>,
    /// The variable holding the ID token (GitLab `id_tokens:`; default AIRLOCK_ID_TOKEN). On
    /// GitHub Actions the token is requested from the runner instead.
    #[arg(long, default_value = "AIRLOCK_ID_TOKEN")]
    pub token_env: String,
    /// GitHub Actions: mask the token and append AIRLOCK_TOKEN=… to $GITHUB_ENV instead of
    /// printing it.
    #[arg(long)]
    pub github_env: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Output format of `airlock doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DoctorFormat {
    Text,
    Markdown,
    Json,
    Sarif,
}

/// The verdict at which `airlock doctor --fail-on` exits 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DoctorFailOn {
    Fragile,
    Discipline,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Repository to examine.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Output format (json: the stable `airlock-doctor/1` report; sarif: SARIF 2.1.0).
    #[arg(long, value_enum, default_value_t = DoctorFormat::Text)]
    pub format: DoctorFormat,
    /// Exit 3 when some question is at least this bad (for CI gating).
    #[arg(long, value_enum)]
    pub fail_on: Option<DoctorFailOn>,
    /// Also ask the airlock server (AIRLOCK_URL, AIRLOCK_TOKEN): tokens by role, admins,
    /// tokens without expiry, stacks whose direct writes are open.
    #[arg(long)]
    pub server: bool,
    /// Server URL (with --server).
    #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:8750")]
    pub url: String,
    /// API token (with --server; an admin token also lists tokens).
    #[arg(long, env = "AIRLOCK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Extra CA certificate(s) to trust for an https:// server (PEM).
    #[arg(long, env = "AIRLOCK_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Most evidence lines shown per question in text and markdown (json and sarif list all).
    #[arg(long, default_value_t = 20)]
    pub max_evidence: usize,
}

/// `airlock demo`.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Replay the incident airlock exists for (a production stack destroyed, database backups
    /// included) against a local test cloud in a temporary directory, step by step: every
    /// destructive step stopped, and why. Needs `terraform` on PATH and the test cloud provider
    /// (`terraform-provider-aws` next to this executable, or AIRLOCK_TESTCLOUD_PROVIDER).
    /// Exits 0 only when every step ended as expected.
    Incident {
        /// The same steps against a local backend, without airlock: everything is destroyed.
        #[arg(long)]
        without_airlock: bool,
        /// Keep the temporary directory (server data, cloud, working directories).
        #[arg(long)]
        keep: bool,
    },
}

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// How client commands reach the server.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:8750")]
    pub url: String,
    /// API token.
    #[arg(long, env = "AIRLOCK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Extra CA certificate(s) to trust for an https:// server (PEM), besides the system's.
    #[arg(long, env = "AIRLOCK_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "AIRLOCK_LISTEN", default_value = "127.0.0.1:8750")]
    pub listen: String,
    /// The URL people and browsers use to reach this server, e.g. `https://airlock.example.com`
    /// behind a TLS-terminating proxy: browsers may call `/mcp` only from its origin, and the
    /// console's cookies are `Secure` when it is `https://` (as they are with `--tls-cert`).
    #[arg(long, env = "AIRLOCK_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Directory of the embedded SQLite database.
    #[arg(
        long,
        env = "AIRLOCK_DATA_DIR",
        default_value = ".airlock",
        conflicts_with = "database_url"
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (postgres://...) instead of the embedded SQLite database.
    #[arg(long, env = "AIRLOCK_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "AIRLOCK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "AIRLOCK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Create unknown stacks on first use (sandboxes only: a typo then looks like an empty stack).
    #[arg(long, env = "AIRLOCK_AUTO_CREATE_STACKS")]
    pub auto_create_stacks: bool,
    /// Largest accepted state body, in MiB.
    #[arg(long, env = "AIRLOCK_MAX_STATE_MIB", default_value_t = 256)]
    pub max_state_mib: usize,
    /// Largest run upload (plan and plan JSON) from an agent token, in MiB.
    #[arg(long, env = "AIRLOCK_MAX_AGENT_RUN_UPLOAD_MIB", default_value_t = 64)]
    pub max_agent_run_upload_mib: usize,
    /// Largest run upload or apply log from any other role, in MiB.
    #[arg(long, env = "AIRLOCK_MAX_RUN_UPLOAD_MIB", default_value_t = 768)]
    pub max_run_upload_mib: usize,
    /// Seconds a connection may take to send a complete request header (idle keep-alive and
    /// the TLS handshake included) before it is closed.
    #[arg(long, env = "AIRLOCK_HEADER_READ_TIMEOUT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Seconds a request body may stall (no data at all) before the request fails.
    #[arg(long, env = "AIRLOCK_BODY_READ_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout_secs: u64,
    /// Seconds one request may take, from its header to its response.
    #[arg(long, env = "AIRLOCK_REQUEST_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Most connections open at once; past it, the connection that has waited longest for a
    /// request header is closed to make room.
    #[arg(long, env = "AIRLOCK_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// What the server logs on stderr: `warn` (default) logs every refused request with its
    /// reason, stack and actor (Terraform shows only the status code); `info` adds one line per
    /// request; `error` only internal errors.
    #[arg(long, env = "AIRLOCK_LOG", value_enum, default_value_t = LogLevelArg::Warn)]
    pub log_level: LogLevelArg,
    /// Seconds an applying run outlives the last report of its `airlock apply` (which reports
    /// every tenth of it): then the run is closed as abandoned (`failed`), and its run-bound
    /// token and removal grant have expired. An apply that reports goes on for up to 24 hours.
    /// The apply-phase cloud identity token (OIDC) lives no longer than this, and is refused
    /// below 60 seconds.
    #[arg(long, env = "AIRLOCK_APPLY_IDLE_TIMEOUT_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub apply_idle_timeout_secs: u64,
    /// Seconds a plan-phase token outlives the last report of its `airlock plan` (which reports
    /// every tenth of it, with the token that minted it): its first lifetime, renewed by each
    /// report for up to 24 hours, so a long plan still releases its lock. A dead planner's token
    /// expires within this time; an approved apply takes over the lock its plan left.
    #[arg(long, env = "AIRLOCK_PLAN_IDLE_TIMEOUT_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub plan_idle_timeout_secs: u64,
    /// Runs an agent-role user may plan an hour (every replica; uploads past it get 429, since
    /// what a run reviewed is kept for good), and plan-phase tokens it may mint. Pull-request
    /// jobs logged in through an `agent` trust share their trust's user: raise this when a
    /// change plans many stacks. Other roles' plan-phase tokens: 1,000 an hour.
    #[arg(long, env = "AIRLOCK_AGENT_RUNS_PER_HOUR", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub agent_runs_per_hour: u64,
    /// MiB of stored states the JSON API reads whole at once (diffs, and shows of versions not
    /// in the cache), all requests together; past it, reads wait their turn (a read larger than
    /// the budget runs alone).
    #[arg(long, env = "AIRLOCK_STATE_READ_BUDGET_MIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub state_read_budget_mib: u32,
}

/// `airlock server --log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevelArg {
    Off,
    Error,
    Warn,
    Info,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Upload every `*.rego` file under DIR (except `*_test.rego`) as the next version of the
    /// policy set for the stacks GLOB matches (it replaces the glob's active set). Every run of
    /// those stacks is judged by it too; its deny is a deny whatever the repository says.
    Add {
        /// Stack glob, e.g. 'prod/*'.
        #[arg(long = "stack")]
        stack_glob: String,
        /// Directory of the policy files (package main, conftest conventions).
        dir: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List policy sets, removed ones included.
    List(ClientArgs),
    /// Show a policy set with its files.
    Show {
        /// The set's id (pol_…).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a policy set from applying (it is kept, with the reason).
    Remove {
        /// The set's id (pol_…).
        id: String,
        /// Why, recorded in the set and the audit log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user: 1-64 characters of a-z, A-Z, 0-9, '.', '_', '-', '@'.
    Create {
        /// The user's name, e.g. alice.
        name: String,
        /// A forge identity of the user, FORGE:LOGIN (github:alice, gitlab:alice); repeatable.
        /// The user cannot approve runs of pull/merge requests that login wrote or pushed.
        #[arg(long = "forge-login", value_name = "FORGE:LOGIN")]
        forge_logins: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give an existing user a forge identity (admin only; a login belongs to one user).
    AddForgeLogin {
        /// The user's name.
        name: String,
        /// FORGE:LOGIN, e.g. github:alice.
        login: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List users.
    List(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; the secret is shown once. With --data-dir or --database-url, works on
    /// the database directly, with no server and no token: the recovery when the first admin
    /// token is lost.
    Create {
        /// Who or what the token is for.
        #[arg(long)]
        name: String,
        /// admin, approver, ci, agent or reader.
        #[arg(long)]
        role: String,
        /// Limit the token to stacks matching this glob (repeatable), e.g. 'prod/*'.
        #[arg(long = "stack")]
        stacks: Vec<String>,
        /// Lifetime, e.g. 12h, 30d.
        #[arg(long)]
        ttl: Option<String>,
        /// The user the token belongs to (see `airlock user create`); required for admin and
        /// approver tokens. A ci, agent or reader token without one is its own identity.
        #[arg(long)]
        user: Option<String>,
        /// Offline recovery: create the token directly in this data directory (SQLite), with
        /// no server running and no token needed; audited as `offline (uid N on HOST)`.
        #[arg(long, conflicts_with = "database_url")]
        data_dir: Option<PathBuf>,
        /// Offline recovery on PostgreSQL: create the token directly in this database.
        #[arg(long, hide_env_values = true)]
        database_url: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tokens (never their secrets).
    List(ClientArgs),
    /// Revoke a token by id.
    Revoke {
        /// Token id (tok_...).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Create a stack.
    Create {
        /// Stack name, e.g. prod/network.
        stack: String,
        /// Mark the stack as production (direct writes admins only, 2 approvals).
        #[arg(long)]
        production: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List stacks.
    List(ClientArgs),
    /// Show a stack: settings, lock, current version, protected instances.
    Show {
        /// Stack name.
        stack: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Protect resource types or address globs in a stack (on top of the built-in catalogue).
    Protect {
        /// Stack name.
        stack: String,
        /// Resource type to protect (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Address glob to protect (repeatable), e.g. 'module.network.*'.
        #[arg(long = "address")]
        addresses: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove protection rules added with `stack protect` (admins; audited). The built-in
    /// catalogue of critical types is not a rule of the stack and stays.
    Unprotect {
        /// Stack name.
        stack: String,
        /// Resource type to unprotect (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Address glob to unprotect (repeatable), exactly as it was added.
        #[arg(long = "address")]
        addresses: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a stack (admins; audited). It is archived, never erased: its versions, runs and
    /// audit stay readable, it refuses new state writes, locks and runs, and its name stays
    /// taken. Refused while the stack is locked or a run is applying.
    Delete {
        /// Stack name.
        stack: String,
        /// Why the stack is deleted (recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a stack's settings.
    Settings {
        /// Stack name.
        stack: String,
        /// Roles that may write state outside a run, comma-separated (admin, approver, ci).
        #[arg(long, value_delimiter = ',')]
        direct_writes: Option<Vec<String>>,
        /// Approvals a run needs.
        #[arg(long)]
        required_approvals: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Allow one state write to remove specific protected instances (single use, audited).
    AllowRemoval {
        /// Stack name.
        stack: String,
        /// Instance address (repeatable).
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        /// How long the grant stays usable, e.g. 1h.
        #[arg(long)]
        ttl: String,
        /// Why the removal is intended.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct BackendConfigArgs {
    /// Stack name.
    pub stack: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List a stack's versions.
    History {
        /// Stack name.
        stack: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a version: instances, outputs, serial, lineage, author, run, time.
    Show {
        /// Stack name.
        stack: String,
        /// Serial (default: current).
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a version's exact bytes.
    Pull {
        /// Stack name.
        stack: String,
        /// Serial (default: current).
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Instances added, removed and changed between two versions.
    Diff {
        /// Stack name.
        stack: String,
        /// Older serial.
        from: u64,
        /// Newer serial.
        to: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write an old version again as a new version (audited).
    Restore {
        /// Stack name.
        stack: String,
        /// Serial to restore.
        #[arg(long)]
        version: u64,
        /// Why.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-hash every stored version (of one stack, or all).
    Verify {
        /// Stack name (default: all).
        stack: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Verify the hash chain instead of listing events.
    #[arg(long)]
    pub verify: bool,
    /// How many events to show (the newest first; at most 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Only events older than this sequence number (the next page: the hint prints it).
    #[arg(long, conflicts_with = "after")]
    pub before: Option<i64>,
    /// Only events of this stack.
    #[arg(long)]
    pub stack: Option<String>,
    /// Only events with this action, e.g. state.write, lock, denied, token.create.
    #[arg(long)]
    pub action: Option<String>,
    /// Only accepted (ok) or refused (denied) requests.
    #[arg(long, value_enum)]
    pub outcome: Option<AuditOutcome>,
    /// Only events whose actor contains this text (a token name or id).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events at or after this time: RFC 3339 (2026-11-30T12:00:00Z), a date, or a
    /// duration ago (30m, 1h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Instead: the events after this sequence number, oldest first, unfiltered (to follow
    /// the chain in order).
    #[arg(long, conflicts_with_all = ["stack", "action", "outcome", "actor", "since", "until"])]
    pub after: Option<i64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `airlock audit --outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditOutcome {
    Ok,
    Denied,
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// Stack name.
    pub stack: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Output format of `airlock check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Markdown,
    Json,
    Sarif,
}

/// Which decision makes `airlock check` exit non-zero besides `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    Review,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Plan to check: `terraform show -json` output, a binary plan file, or `-` for stdin.
    pub plan: String,
    /// Repository configuration (airlock.hcl).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of Rego policies (conftest conventions: `deny`/`warn` rules).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
    /// Also exit non-zero (3) when the decision is `review`.
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
    /// Terraform binary used to read a binary plan file (e.g. `tofu`).
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
    /// Stack (a `stack` block of airlock.hcl) the plan belongs to; defaults to the only one.
    #[arg(long)]
    pub stack: Option<String>,
}

/// Where a command that works on the database directly (not through a server) finds it:
/// the same flags and environment as `airlock server`.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Directory of the embedded SQLite database.
    #[arg(
        long,
        env = "AIRLOCK_DATA_DIR",
        default_value = ".airlock",
        conflicts_with = "database_url"
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (postgres://...) instead of the embedded SQLite database.
    #[arg(long, env = "AIRLOCK_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write every stack's full history, the locks, tokens (secret hashes only), removal grants
    /// and the audit chain to DIR as plain files with a SHA-256 manifest. Reads the database
    /// directly; servers may keep running.
    Export {
        /// Directory to create (must not exist or be empty).
        dir: PathBuf,
        #[command(flatten)]
        db: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Re-hash every file against the manifest, check every version and the audit chain,
    /// replay the backup into a scratch SQLite store and compare. Needs no server or database.
    Verify {
        /// Backup directory.
        dir: PathBuf,
        /// The manifest.json SHA-256 printed by `backup export`: also check the manifest is
        /// the one exported (a replaced manifest could describe replaced files consistently).
        #[arg(long, value_name = "HASH")]
        manifest_sha256: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Also report the result to the airlock server the backup was exported from
        /// (AIRLOCK_URL, AIRLOCK_TOKEN of the ci or admin role); it is audited as
        /// `backup.verify`, and `airlock doctor --server` reads it.
        #[arg(long)]
        record: bool,
        /// Server URL (with --record).
        #[arg(long, env = "AIRLOCK_URL", default_value = "http://127.0.0.1:8750")]
        url: String,
        /// API token (with --record).
        #[arg(long, env = "AIRLOCK_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Extra CA certificate(s) to trust for an https:// server (PEM).
        #[arg(long, env = "AIRLOCK_CA_CERT")]
        ca_cert: Option<PathBuf>,
    },
    /// Restore a verified backup into an EMPTY store (SQLite or PostgreSQL), losslessly: same
    /// serials, hashes, authors, times, tokens and audit records. Run it before any server.
    Import {
        /// Backup directory.
        dir: PathBuf,
        /// The manifest.json SHA-256 printed by `backup export`: refuse the backup unless its
        /// manifest is the one exported (whoever can rewrite a backup can rewrite its whole
        /// audit chain consistently; only this hash, kept apart, tells).
        #[arg(long, value_name = "HASH")]
        manifest_sha256: Option<String>,
        #[command(flatten)]
        db: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Root module directory (default: the current directory). The repository root is the
    /// nearest directory at or above it holding airlock.hcl; its airlock.hcl and policy/**.rego
    /// are the policy the run is judged by, and part of the run's inputs.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Stack to plan (default: the `stack` block of airlock.hcl whose `dir` is DIR).
    #[arg(long)]
    pub stack: Option<String>,
    /// Write the markdown summary (for a pull-request comment) to this file.
    #[arg(long)]
    pub summary_file: Option<PathBuf>,
    /// Plan the destruction of everything the stack manages (`terraform plan -destroy`); the
    /// server judges it like any plan, destroy confirmation included.
    #[arg(long)]
    pub destroy: bool,
    /// Plan to accept drift (`terraform plan -refresh-only`): the run's apply records in the
    /// state what changed outside Terraform and changes no infrastructure; the server judges
    /// the drift like any change (an instance dropped from the state as destroyed there).
    #[arg(long, conflicts_with = "destroy")]
    pub refresh_only: bool,
    /// Terraform binary (e.g. `tofu`).
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
    /// Another stack whose state the plan may read (`terraform_remote_state`), besides the
    /// stack block's `depends_on` in airlock.hcl; repeatable. Exact names, each one your token
    /// may read; the plan-phase token may read only their state, nothing else.
    #[arg(long, value_name = "STACK")]
    pub read_stack: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs of this stack.
    #[arg(long)]
    pub stack: Option<String>,
    /// Only runs in this status: needs_approval, approved, applying, applied, failed, rejected,
    /// superseded, expired, denied, no_changes, withdrawn.
    #[arg(long)]
    pub status: Option<String>,
    /// Only runs planned by this user (or token id, or token name).
    #[arg(long)]
    pub author: Option<String>,
    /// Only runs planned from this git commit (a prefix of at least 4 hex characters).
    #[arg(long)]
    pub commit: Option<String>,
    /// At most this many runs, newest first (the server caps it at 500).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// The commit and directory it was planned from, its author, destructive changes first,
    /// findings, approvals, the checks made, and whether it is still current.
    Show {
        /// Run id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Withdraw a run you planned (any of your user's tokens, an agent's included) while it is
    /// open: it can no longer be approved or applied.
    Withdraw {
        /// Run id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Run id.
    pub id: String,
    /// Required when the run destroys anything: the number of instances it destroys.
    #[arg(long)]
    pub confirm_destroy: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    /// Run id.
    pub id: String,
    /// Why.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Run id.
    pub id: String,
    /// The stack's root module directory (default: the directory the run was planned in,
    /// relative to the repository root, i.e. the nearest directory above the current one that
    /// holds airlock.hcl).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Terraform binary.
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum GuardCommand {
    /// Write DIR/terraform; put DIR first on the agent's PATH.
    Install {
        /// Directory for the shim.
        dir: PathBuf,
        /// The real terraform binary (default: the first `terraform` on PATH outside DIR).
        #[arg(long)]
        terraform_bin: Option<PathBuf>,
    },
}

/// `airlock ci ...`. Each command's arguments belong to its own module in `commands/ci/`.
#[derive(Debug, Subcommand)]
pub enum CiCommand {
    /// Write the CI workflow files for a forge (`github` or `gitlab`) into the repository.
    Init(CiInitArgs),
    /// Print the stacks a change affects and why (file, module, var file, airlock.hcl).
    Affected(CiAffectedArgs),
    /// Plan every affected stack as a governed run; comment and set statuses on the pull request.
    Plan(CiPlanArgs),
    /// After merge: apply the approved run of every affected stack whose inputs are the checkout's.
    Apply(CiApplyArgs),
    /// Scheduled: check every stack (or the given ones) for drift; one issue per drifted stack
    /// on the forge, closed when it clears. Never applies. Exit 0 in sync, 3 drifted, 1 unknown.
    Drift(CiDriftArgs),
}

/// `airlock ci init`.
#[derive(Debug, Args)]
pub struct CiInitArgs {
    /// The forge whose CI runs the workflow.
    #[arg(value_enum)]
    pub forge: Forge,
    /// The repository to write into (its root: where airlock.hcl is).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The branch whose pushes apply (default: the remote's default branch, else `main`).
    #[arg(long)]
    pub default_branch: Option<String>,
    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
}

/// A code forge with CI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Forge {
    /// GitHub Actions.
    Github,
    /// GitLab CI.
    Gitlab,
}

/// `airlock ci affected`.
#[derive(Debug, Args)]
pub struct CiAffectedArgs {
    /// The branch the change goes into. Default: the pull request's target in CI
    /// (`GITHUB_BASE_REF`, `CI_MERGE_REQUEST_DIFF_BASE_SHA`), else `origin/HEAD`.
    #[arg(long)]
    pub base: Option<String>,
    /// The change's commit.
    #[arg(long, default_value = "HEAD")]
    pub head: String,
    /// Where to look for airlock.hcl (this directory or a parent).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Output format (json: the affected set).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// `airlock ci plan`.
#[derive(Debug, Args)]
pub struct CiPlanArgs {
    /// The ref to compare with (the merge base of it and HEAD is the base). Default: the pull
    /// request's base commit in CI; required outside CI (e.g. `--base main`).
    #[arg(long)]
    pub base: Option<String>,
    /// Plan nothing: report each affected stack's newest run for exactly the checkout's inputs
    /// and update the statuses and the comment (plain `ci plan` also reuses such a run while it
    /// is open and current, so re-running the job after an approval is the usual refresh).
    #[arg(long)]
    pub refresh: bool,
    /// Print the comment instead of posting it (the default outside CI).
    #[arg(long)]
    pub print: bool,
    /// Only these stacks, instead of the affected set (repeatable).
    #[arg(long = "stack", hide = true)]
    pub stacks: Vec<String>,
    /// Terraform binary.
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `airlock ci apply`.
#[derive(Debug, Args)]
pub struct CiApplyArgs {
    /// The commit before the push (default: the push event's previous tip in CI, else `HEAD^1`,
    /// the merge commit's first parent).
    #[arg(long)]
    pub base: Option<String>,
    /// Only these stacks, instead of the affected set (repeatable).
    #[arg(long = "stack", hide = true)]
    pub stacks: Vec<String>,
    /// Terraform binary.
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `airlock mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// The working tree `propose_change` may plan in: a directory it is asked for must resolve
    /// inside it (no `..`, no symlink out). Default: the current directory.
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Terraform binary `propose_change` runs (e.g. `tofu`).
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `airlock drift`.
#[derive(Debug, Args)]
pub struct DriftArgs {
    /// Root module directory (default: the current directory).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Stack to check (default: the `stack` block of airlock.hcl whose `dir` is DIR).
    #[arg(long)]
    pub stack: Option<String>,
    /// When drift is found, upload the check's refresh-only plan as a governed run that accepts
    /// it (as `airlock plan --refresh-only` would): a human reviews it, CI applies it with
    /// `airlock apply`. The exit code stays the check's.
    #[arg(long)]
    pub propose: bool,
    /// Terraform binary (e.g. `tofu`).
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
    /// Another stack whose state the check's plan may read (`terraform_remote_state`), besides
    /// the stack block's `depends_on` in airlock.hcl; repeatable, as for `airlock plan`.
    #[arg(long, value_name = "STACK")]
    pub read_stack: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `airlock ci drift`.
#[derive(Debug, Args)]
pub struct CiDriftArgs {
    /// Only these stacks (repeatable; default: every stack block of airlock.hcl with a dir).
    #[arg(long = "stack")]
    pub stacks: Vec<String>,
    /// Print only: open, update or close no issue (the default outside CI).
    #[arg(long)]
    pub print: bool,
    /// For each drifted stack, also propose a run that accepts the drift (the check's own
    /// refresh-only plan; reviewed and applied like any run, it changes no infrastructure) and
    /// link it from the issue. An open one from the same code at the same state is linked again.
    #[arg(long)]
    pub propose: bool,
    /// Terraform binary.
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
    #[command(flatten)]
    pub client: ClientArgs,
}
