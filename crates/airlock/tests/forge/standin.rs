//! Starts the forge stand-in (`standin.mjs`: a local GitHub and GitLab that checks every request
//! against GitHub's OpenAPI description and GitLab's documented endpoints) and reads what it
//! recorded. Shared by the integration tests (`tests/it/forge.rs`) and the client's unit tests
//! (`src/commands/ci/forge.rs`), both of which include this file by path.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

/// A running stand-in; killed on drop.
pub struct ForgeStandIn {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The token it accepts as the CI's own identity (`github-actions[bot]` / a GitLab project bot).
    pub token: String,
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

/// One request the stand-in received, as it recorded it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Value,
    /// The raw body (text), if any.
    pub body: Option<String>,
    /// `issues/create-comment`, `POST /projects/:id/statuses/:sha`, ... (None when unmatched).
    pub operation: Option<String>,
    pub status: u16,
    pub violations: Vec<String>,
    /// Where the stand-in's own answer broke the API description's response schema (a bug in
    /// the stand-in: the client would have been tested against something GitHub never sends).
    pub standin_errors: Vec<String>,
}

impl Recorded {
    /// The body parsed as JSON (panics when there is none: the caller expects one).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.body.as_deref().expect("request has a body")).expect("JSON body")
    }
}

impl ForgeStandIn {
    /// Spawns `node standin.mjs --token TOKEN` on a free port. Fails (never skips) when
    /// `AIRLOCK_TEST_NODE_MODULES` is unset: `scripts/test-deps.sh` installs `@octokit/openapi`.
    pub fn start(token: &str) -> ForgeStandIn {
        let modules = std::env::var("AIRLOCK_TEST_NODE_MODULES").unwrap_or_default();
        assert!(
            !modules.is_empty(),
            "AIRLOCK_TEST_NODE_MODULES is not set: the forge stand-in reads GitHub's API description \
             from @octokit/openapi; run `. scripts/test-deps.sh` (scripts/test.sh does) first"
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/forge/standin.mjs");
        let mut child = Command::new("node")
            .args([script, "--token", token, "--port", "0"])
            .env("AIRLOCK_TEST_NODE_MODULES", &modules)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning `node` for the forge stand-in (is Node.js installed?)");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let base = loop {
            line.clear();
            if stdout
                .read_line(&mut line)
                .expect("reading the stand-in's stdout")
                == 0
            {
                panic!("the forge stand-in exited before listening (see its stderr above)");
            }
            if let Some(url) = line.trim().strip_prefix("listening ") {
                break url.to_owned();
            }
        };
        ForgeStandIn {
            base,
            token: token.to_owned(),
            child,
            _stdout: stdout,
        }
    }

    /// `GITHUB_API_URL` for this stand-in.
    pub fn url_github(&self) -> String {
        format!("{}/github", self.base)
    }

    /// `CI_API_V4_URL` for this stand-in.
    pub fn url_gitlab(&self) -> String {
        format!("{}/gitlab/api/v4", self.base)
    }

    fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let req = ureq::request(method, &format!("{}/__standin/{path}", self.base));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        }
        .unwrap_or_else(|e| panic!("stand-in control {method} {path}: {e}"));
        let text = resp.into_string().expect("control response");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("control response is JSON")
        }
    }

    /// Every request received so far (control requests excepted), in order.
    pub fn requests(&self) -> Vec<Recorded> {
        let all = self.control("GET", "requests", None);
        all.as_array()
            .expect("an array of requests")
            .iter()
            .map(|r| Recorded {
                method: r["method"].as_str().unwrap_or_default().to_owned(),
                path: r["path"].as_str().unwrap_or_default().to_owned(),
                query: r["query"].clone(),
                body: r["body"].as_str().map(str::to_owned),
                operation: r["operation"].as_str().map(str::to_owned),
                status: r["status"].as_u64().unwrap_or_default() as u16,
                violations: strings(&r["violations"]),
                standin_errors: strings(&r["standin_errors"]),
            })
            .collect()
    }

    /// Panics, listing them, when any recorded request broke the API description or a forge rule,
    /// or any answer of the stand-in broke the description.
    pub fn assert_no_violations(&self) {
        let bad: Vec<_> = self
            .requests()
            .into_iter()
            .filter(|r| !r.violations.is_empty() || !r.standin_errors.is_empty())
            .collect();
        assert!(
            bad.is_empty(),
            "requests the real forge would refuse: {bad:#?}"
        );
    }

    /// The stand-in's state: `{github: {comments, statuses, issues, ...}, gitlab: {notes,
    /// statuses, issues, ...}}`.
    pub fn state(&self) -> Value {
        self.control("GET", "state", None)
    }

    /// The next `count` requests with `method` whose path matches the regex `path` are answered
    /// `status` with `headers` instead of being served.
    pub fn fail_next(
        &self,
        method: &str,
        path: &str,
        count: u32,
        status: u16,
        headers: &[(&str, &str)],
    ) {
        self.inject(method, path, count, status, headers, false);
    }

    /// Like [`fail_next`](Self::fail_next), but the request takes effect first and only its
    /// answer is lost (a proxy that times out after the forge committed the write).
    pub fn fail_after_next(&self, method: &str, path: &str, count: u32, status: u16) {
        self.inject(method, path, count, status, &[], true);
    }

    fn inject(
        &self,
        method: &str,
        path: &str,
        count: u32,
        status: u16,
        headers: &[(&str, &str)],
        apply: bool,
    ) {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        self.control(
            "POST",
            "fail",
            Some(json!({"method": method, "path": path, "count": count, "status": status, "headers": headers, "apply": apply})),
        );
    }

    /// The next request with `method` whose path matches the regex `path` is answered `status`
    /// with `headers` and `raw` as its body, verbatim (a malformed or hostile answer).
    pub fn answer_next(
        &self,
        method: &str,
        path: &str,
        status: u16,
        headers: &[(&str, &str)],
        raw: &str,
    ) {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        self.control(
            "POST",
            "fail",
            Some(json!({"method": method, "path": path, "count": 1, "status": status, "headers": headers, "raw": raw})),
        );
    }

    /// Like [`answer_next`](Self::answer_next), but the request takes effect first and only its
    /// answer is replaced (a create whose answer came back garbled).
    pub fn answer_after_next(&self, method: &str, path: &str, status: u16, raw: &str) {
        self.control(
            "POST",
            "fail",
            Some(json!({"method": method, "path": path, "count": 1, "status": status, "raw": raw, "apply": true})),
        );
    }

    /// The GitLab identity of `token` becomes a member of `projects` only (a project access
    /// token: its one project); a request for another project is answered 404.
    pub fn gitlab_member_only_of(&self, token: &str, projects: &[&str]) {
        self.control(
            "POST",
            "gitlab_projects",
            Some(json!({"token": token, "projects": projects})),
        );
    }

    /// Another identity: requests with `token` act as `login` (a person, `type: User`).
    pub fn add_user(&self, token: &str, login: &str) {
        self.control(
            "POST",
            "users",
            Some(json!({"token": token, "login": login})),
        );
    }

    /// The variables GitHub Actions sets for a `pull_request` run of `repository` (`owner/repo`)
    /// against this stand-in, with the event payload written into `dir`. `GITHUB_SHA` is a
    /// synthetic merge commit, as on GitHub, never `head`.
    pub fn github_pr_env(
        &self,
        dir: &Path,
        repository: &str,
        pr: u64,
        head: &str,
        base: &str,
    ) -> Vec<(String, String)> {
        let event =
            json!({"pull_request": {"number": pr, "head": {"sha": head}, "base": {"sha": base}}});
        self.github_env(
            dir,
            repository,
            "pull_request",
            &event,
            "3333333333333333333333333333333333333333",
            &format!("refs/pull/{pr}/merge"),
        )
    }

    /// The variables GitHub Actions sets for a `push` of `sha` to `branch` (`before` the previous tip).
    pub fn github_push_env(
        &self,
        dir: &Path,
        repository: &str,
        branch: &str,
        default_branch: &str,
        before: &str,
        sha: &str,
    ) -> Vec<(String, String)> {
        let event = json!({"before": before, "after": sha, "repository": {"default_branch": default_branch}});
        self.github_env(
            dir,
            repository,
            "push",
            &event,
            sha,
            &format!("refs/heads/{branch}"),
        )
    }

    fn github_env(
        &self,
        dir: &Path,
        repository: &str,
        name: &str,
        event: &Value,
        sha: &str,
        git_ref: &str,
    ) -> Vec<(String, String)> {
        let path = dir.join(format!("github-event-{name}.json"));
        std::fs::write(&path, event.to_string()).expect("writing the event payload");
        pairs(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", repository),
            ("GITHUB_EVENT_NAME", name),
            (
                "GITHUB_EVENT_PATH",
                path.to_str().expect("a UTF-8 temp path"),
            ),
            ("GITHUB_SHA", sha),
            ("GITHUB_REF", git_ref),
            ("GITHUB_API_URL", &self.url_github()),
            ("GITHUB_TOKEN", &self.token),
        ])
    }

    /// The variables GitLab CI sets for a merge request pipeline of project `project` (an ID),
    /// with this stand-in's token as the project access token `AIRLOCK_GITLAB_TOKEN`.
    pub fn gitlab_mr_env(
        &self,
        project: &str,
        iid: u64,
        head: &str,
        base: &str,
    ) -> Vec<(String, String)> {
        let mut env = self.gitlab_env(project, head);
        env.extend(pairs(&[
            ("CI_PIPELINE_SOURCE", "merge_request_event"),
            ("CI_MERGE_REQUEST_IID", &iid.to_string()),
            ("CI_MERGE_REQUEST_DIFF_BASE_SHA", base),
        ]));
        env
    }

    /// The variables GitLab CI sets for a branch pipeline of `sha` on `branch`.
    pub fn gitlab_push_env(
        &self,
        project: &str,
        branch: &str,
        default_branch: &str,
        before: &str,
        sha: &str,
    ) -> Vec<(String, String)> {
        let mut env = self.gitlab_env(project, sha);
        env.extend(pairs(&[
            ("CI_PIPELINE_SOURCE", "push"),
            ("CI_COMMIT_BRANCH", branch),
            ("CI_DEFAULT_BRANCH", default_branch),
            ("CI_COMMIT_BEFORE_SHA", before),
        ]));
        env
    }

    /// The variables GitLab CI sets for a scheduled pipeline of `sha` on the default branch `branch`.
    pub fn gitlab_schedule_env(
        &self,
        project: &str,
        branch: &str,
        sha: &str,
    ) -> Vec<(String, String)> {
        let mut env = self.gitlab_env(project, sha);
        env.extend(pairs(&[
            ("CI_PIPELINE_SOURCE", "schedule"),
            ("CI_COMMIT_BRANCH", branch),
            ("CI_DEFAULT_BRANCH", branch),
            ("CI_COMMIT_BEFORE_SHA", &"0".repeat(40)),
        ]));
        env
    }

    fn gitlab_env(&self, project: &str, sha: &str) -> Vec<(String, String)> {
        pairs(&[
            ("GITLAB_CI", "true"),
            ("CI_PROJECT_ID", project),
            (
                "CI_PROJECT_URL",
                &format!("https://gitlab.example/project-{project}"),
            ),
            ("CI_COMMIT_SHA", sha),
            ("CI_API_V4_URL", &self.url_gitlab()),
            ("AIRLOCK_GITLAB_TOKEN", &self.token),
            ("CI_JOB_TOKEN", "a-job-token-that-cannot-post-notes"),
        ])
    }

    /// Registers a pull request (`forge: "github"`, project `owner/repo`) or merge request
    /// (`forge: "gitlab"`, project id) known by its head and merge commits, for
    /// "which change does this commit come from" look-ups; merged when it has a merge commit,
    /// open otherwise.
    pub fn add_change(
        &self,
        forge: &str,
        project: &str,
        number: u64,
        head_sha: &str,
        merge_commit_sha: Option<&str>,
    ) {
        let state = if merge_commit_sha.is_some() {
            "merged"
        } else {
            "open"
        };
        self.control(
            "POST",
            "changes",
            Some(
                json!({"forge": forge, "project": project, "number": number, "head_sha": head_sha,
                        "merge_commit_sha": merge_commit_sha, "state": state}),
            ),
        );
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every CI variable the helpers above set: remove them from a spawned `airlock` whose test
/// must not see the real CI's (the suite itself may run on GitHub Actions).
pub const FORGE_VARS: &[&str] = &[
    "GITHUB_ACTIONS",
    "GITHUB_REPOSITORY",
    "GITHUB_EVENT_NAME",
    "GITHUB_EVENT_PATH",
    "GITHUB_SHA",
    "GITHUB_REF",
    "GITHUB_API_URL",
    "GITHUB_TOKEN",
    "AIRLOCK_GITHUB_COMMENT_AUTHOR",
    "GITLAB_CI",
    "CI_PROJECT_ID",
    "CI_PROJECT_URL",
    "CI_COMMIT_SHA",
    "CI_API_V4_URL",
    "AIRLOCK_GITLAB_TOKEN",
    "CI_JOB_TOKEN",
    "CI_PIPELINE_SOURCE",
    "CI_MERGE_REQUEST_IID",
    "CI_MERGE_REQUEST_DIFF_BASE_SHA",
    "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA",
    "CI_COMMIT_BRANCH",
    "CI_DEFAULT_BRANCH",
    "CI_COMMIT_BEFORE_SHA",
];

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Drop for ForgeStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
