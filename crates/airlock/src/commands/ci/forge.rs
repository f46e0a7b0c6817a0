//! The GitHub and GitLab REST clients `airlock ci` uses: where the CI says we are
//! ([`Forge::from_env`]), the sticky comment on the pull/merge request ([`Forge::upsert_comment`]),
//! commit statuses ([`Forge::set_status`]), the change a merge commit came from
//! ([`Forge::change_for_commit`]) and one issue per drifted stack ([`Forge::upsert_issue`],
//! [`Forge::close_issue`]).
//!
//! The API base URL always comes from the CI's variables (GitHub Enterprise, self-managed GitLab).
//! Failures are retried only where a retry cannot duplicate anything, within a bounded wait, and end
//! in a [`ForgeError`] whose message names what to fix. Tests: the unit tests below, against the
//! forge stand-in (`tests/forge/standin.mjs`), which checks every request against GitHub's OpenAPI
//! description and GitLab's documented endpoints.

// `ci plan` and `ci apply` (being written in parallel) are this module's callers.
#![cfg_attr(not(test), allow(dead_code))]

use std::fmt;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::commands::client::printable;

// The CI variables read, in one place.
const GITHUB_ACTIONS: &str = "GITHUB_ACTIONS";
const GITHUB_REPOSITORY: &str = "GITHUB_REPOSITORY";
const GITHUB_EVENT_NAME: &str = "GITHUB_EVENT_NAME";
const GITHUB_EVENT_PATH: &str = "GITHUB_EVENT_PATH";
const GITHUB_SHA: &str = "GITHUB_SHA";
const GITHUB_REF: &str = "GITHUB_REF";
const GITHUB_API_URL: &str = "GITHUB_API_URL";
const GITHUB_TOKEN: &str = "GITHUB_TOKEN";
/// The login of whoever started the workflow run (for a pull request: opened or pushed to it).
const GITHUB_ACTOR: &str = "GITHUB_ACTOR";
/// The login whose comments airlock may edit; `GITHUB_TOKEN` comments are `github-actions[bot]`'s.
/// Set it when the workflow posts with a GitHub App's token (`my-app[bot]`).
const AIRLOCK_GITHUB_COMMENT_AUTHOR: &str = "AIRLOCK_GITHUB_COMMENT_AUTHOR";
const GITLAB_CI: &str = "GITLAB_CI";
const CI_API_V4_URL: &str = "CI_API_V4_URL";
const CI_PROJECT_ID: &str = "CI_PROJECT_ID";
const CI_PROJECT_URL: &str = "CI_PROJECT_URL";
const CI_MERGE_REQUEST_IID: &str = "CI_MERGE_REQUEST_IID";
const CI_MERGE_REQUEST_SOURCE_BRANCH_SHA: &str = "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA";
const CI_MERGE_REQUEST_DIFF_BASE_SHA: &str = "CI_MERGE_REQUEST_DIFF_BASE_SHA";
const CI_COMMIT_SHA: &str = "CI_COMMIT_SHA";
const CI_COMMIT_BEFORE_SHA: &str = "CI_COMMIT_BEFORE_SHA";
const CI_COMMIT_BRANCH: &str = "CI_COMMIT_BRANCH";
const CI_DEFAULT_BRANCH: &str = "CI_DEFAULT_BRANCH";
/// A project access token with the `api` scope: `CI_JOB_TOKEN` cannot post merge request notes.
const AIRLOCK_GITLAB_TOKEN: &str = "AIRLOCK_GITLAB_TOKEN";
/// The login of whoever started the pipeline (for a merge request: opened or pushed to it;
/// GitLab has no variable for the merge request's author).
const GITLAB_USER_LOGIN: &str = "GITLAB_USER_LOGIN";

/// GitHub refuses issue comments longer than this many characters.
pub const GITHUB_COMMENT_MAX_CHARS: usize = 65_536;
/// GitLab refuses notes longer than this many characters.
pub const GITLAB_NOTE_MAX_CHARS: usize = 1_000_000;
/// GitLab refuses issue descriptions longer than this many characters.
pub const GITLAB_DESCRIPTION_MAX_CHARS: usize = 1_048_576;
/// GitLab refuses issue titles longer than this; longer ones are shortened.
const ISSUE_TITLE_MAX_CHARS: usize = 255;
/// GitHub refuses commit status descriptions longer than this; longer ones are shortened.
const GITHUB_STATUS_DESCRIPTION_MAX_CHARS: usize = 140;
/// Comments are listed at most this many pages of 100 (10,000 comments) to find ours.
const MAX_COMMENT_PAGES: u32 = 100;
/// A forge answer larger than this is refused (a page of 100 comments of 65,536 characters fits).
const MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;
/// The largest GitHub event payload read from `GITHUB_EVENT_PATH`.
const MAX_EVENT_BYTES: u64 = 32 * 1024 * 1024;

/// A forge and how to reach it, from the CI's variables.
#[derive(Debug, Clone)]
pub enum Forge {
    GitHub(GitHub),
    GitLab(GitLab),
}

/// GitHub (or GitHub Enterprise Server) REST API for one repository.
#[derive(Debug, Clone)]
pub struct GitHub {
    api: Api,
    /// `owner/repo`, validated.
    repository: String,
    /// Comments by this login carrying the marker are airlock's.
    comment_author: String,
}

/// GitLab REST API (v4) for one project.
#[derive(Debug, Clone)]
pub struct GitLab {
    api: Api,
    /// The numeric project ID.
    project: String,
    /// The project's web URL (`CI_PROJECT_URL`), for links to notes.
    project_url: Option<String>,
}

/// What the pipeline runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pull request (GitHub) or merge request (GitLab) pipeline.
    ChangeRequest,
    /// A push to `branch`; `default` when it is the repository's default branch.
    Push { branch: String, default: bool },
    /// Anything else (`workflow_dispatch`, a schedule, ...), by the CI's name for it.
    Other(String),
}

/// Where the CI says this job runs.
#[derive(Debug, Clone)]
pub struct ForgeContext {
    pub forge: Forge,
    /// The pull request number / merge request IID, for change-request pipelines.
    pub change: Option<u64>,
    /// The commit the change request's head is (not GitHub's synthetic merge commit): statuses go here.
    pub head_sha: String,
    /// The change request's base (GitHub) or diff base (GitLab); the previous tip for pushes.
    pub base_sha: Option<String>,
    pub event: Event,
    /// Who the CI says wrote or pushed the change request, as forge logins (`github:alice`),
    /// its author first; empty outside change requests. A claim of the job (whose workflow the
    /// change's author may edit), recorded on the run so these people cannot approve it.
    pub change_authors: Vec<String>,
}

/// A commit status, mapped to each forge's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    /// The check could not run (GitLab has no such state: `failed`).
    Error,
}

impl StatusState {
    fn github(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }

    fn gitlab(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure | StatusState::Error => "failed",
        }
    }
}

/// Why a forge call failed; the message says what to fix.
#[derive(Debug)]
pub struct ForgeError {
    pub kind: ForgeErrorKind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeErrorKind {
    /// The CI variables are missing or malformed, or the call is refused before sending.
    Config,
    /// 401: the token is missing, expired or wrong.
    Unauthorized,
    /// 403: the token may not do this.
    Forbidden,
    /// 404: no such repository, project, pull request or comment (or not visible to the token).
    NotFound,
    /// 400/422: the forge refused the request as invalid.
    Invalid,
    /// Rate limited for longer than the wait budget.
    RateLimited,
    /// 5xx or no answer, after the retries; whether a write took effect is unknown.
    Unavailable,
    /// The body is over the forge's limit; nothing was sent.
    TooLarge,
    /// The forge answered something unexpected.
    Protocol,
}

impl ForgeError {
    fn new(kind: ForgeErrorKind, message: impl Into<String>) -> ForgeError {
        ForgeError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ForgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ForgeError {}

/// How long and how often a failed call is retried. Every wait (a back-off after a 5xx, a
/// `Retry-After`, a rate-limit reset) counts against `max_wait`; a wait beyond it fails at once.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// The first back-off after a 5xx or a lost connection; doubled each time.
    pub backoff: Duration,
    /// The total waiting allowed for one call.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            backoff: Duration::from_secs(2),
            max_wait: Duration::from_secs(90),
        }
    }
}

impl Forge {
    /// From the CI's own variables; `Ok(None)` outside GitHub Actions and GitLab CI. `env` is
    /// the environment (tests pass their own). A missing token is not an error here (the plan
    /// still runs and is tagged); posting then fails with the fix.
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ForgeContext>, ForgeError> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let github = var(GITHUB_ACTIONS).as_deref() == Some("true");
        let gitlab = var(GITLAB_CI).as_deref() == Some("true");
        match (github, gitlab) {
            (false, false) => Ok(None),
            (true, true) => Err(config(format!(
                "both {GITHUB_ACTIONS} and {GITLAB_CI} are set: airlock cannot tell which forge it runs on"
            ))),
            (true, false) => github_context(&var).map(Some),
            (false, true) => gitlab_context(&var).map(Some),
        }
    }

    /// The same forge with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Forge {
        match &mut self {
            Forge::GitHub(g) => g.api.retry = retry,
            Forge::GitLab(g) => g.api.retry = retry,
        }
        self
    }

    /// Creates the sticky comment or updates it in place; returns its URL. The comment is found by
    /// the hidden `marker` (an HTML comment, put first in the body) *and* by an author only this
    /// integration can be, so a user who pastes the marker into a comment of theirs never gets it
    /// edited. Never duplicated: a create whose answer was lost is looked for before re-posting,
    /// and stray copies of our own are deleted. A body over the forge's limit is refused unsent.
    pub fn upsert_comment(
        &self,
        change: u64,
        marker: &str,
        body: &str,
    ) -> Result<String, ForgeError> {
        check_marker(marker)?;
        let body = if body.starts_with(marker) {
            body.to_owned()
        } else {
            format!("{marker}\n{body}")
        };
        let (limit, what) = match self {
            Forge::GitHub(_) => (GITHUB_COMMENT_MAX_CHARS, "GitHub comments"),
            Forge::GitLab(_) => (GITLAB_NOTE_MAX_CHARS, "GitLab notes"),
        };
        let chars = body.chars().count();
        if chars > limit {
            return Err(ForgeError::new(
                ForgeErrorKind::TooLarge,
                format!("the comment is {chars} characters; {what} take at most {limit}: shorten it before posting (nothing was sent)"),
            ));
        }
        let retry = self.api().retry;
        let mut attempt = 1;
        loop {
            let ours = self.our_comments(change, marker)?;
            if let Some((first, rest)) = ours.split_first() {
                if first.body != body {
                    self.update_comment(change, first.id, &body)?;
                }
                for stray in rest {
                    self.delete_comment(change, stray.id)?;
                }
                return Ok(self.comment_url(change, first));
            }
            match self.create_comment(change, &body) {
                Ok(created) => return Ok(self.comment_url(change, &created)),
                // The create may have taken effect: look again before posting again.
                Err(e) if e.kind == ForgeErrorKind::Unavailable && attempt < retry.attempts => {
                    std::thread::sleep(retry.backoff);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The most characters a body given to [`upsert_comment`](Self::upsert_comment) with
    /// `marker` may have here (the forge's limit less the marker line it adds).
    pub fn comment_budget(&self, marker: &str) -> usize {
        let limit = match self {
            Forge::GitHub(_) => GITHUB_COMMENT_MAX_CHARS,
            Forge::GitLab(_) => GITLAB_NOTE_MAX_CHARS,
        };
        limit.saturating_sub(marker.chars().count() + 1)
    }

    /// Sets the commit status `context` of `sha`. Idempotent per sha and context, so retried.
    /// A description longer than GitHub's 140 characters is shortened with `…`.
    pub fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), ForgeError> {
        check_sha(sha, "the commit to set a status on")?;
        let description = shorten(description, GITHUB_STATUS_DESCRIPTION_MAX_CHARS);
        let what = format!("setting commit status {context} on {}", &sha[..12]);
        match self {
            Forge::GitHub(g) => {
                let mut body = json!({"state": state.github(), "context": context, "description": description});
                if let Some(url) = target_url {
                    body["target_url"] = Value::from(url);
                }
                g.api.call(
                    "POST",
                    &format!("/repos/{}/statuses/{sha}", g.repository),
                    Some(&body),
                    true,
                    &what,
                )?;
                Ok(())
            }
            Forge::GitLab(g) => {
                let mut body =
                    json!({"state": state.gitlab(), "name": context, "description": description});
                if let Some(url) = target_url {
                    body["target_url"] = Value::from(url);
                }
                let path = format!("/projects/{}/statuses/{sha}", g.project);
                match g.api.call("POST", &path, Some(&body), true, &what) {
                    Ok(_) => Ok(()),
                    // GitLab refuses `pending -> pending` ("Cannot transition status via :enqueue
                    // from :pending"): the status already is what we ask for.
                    Err(e)
                        if e.kind == ForgeErrorKind::Invalid
                            && e.message.contains("Cannot transition status") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// The pull request (number) / merge request (IID) that `sha` was merged from, if any: for
    /// reporting the outcome of an apply after merge on the change that was reviewed.
    pub fn change_for_commit(&self, sha: &str) -> Result<Option<u64>, ForgeError> {
        check_sha(sha, "the merged commit")?;
        let what = format!("finding the change request of commit {}", &sha[..12]);
        let (list, number_field) = match self {
            Forge::GitHub(g) => {
                let path = format!("/repos/{}/commits/{sha}/pulls?per_page=100", g.repository);
                (g.api.call("GET", &path, None, true, &what)?.json, "number")
            }
            Forge::GitLab(g) => {
                let path = format!(
                    "/projects/{}/repository/commits/{sha}/merge_requests?per_page=100",
                    g.project
                );
                (g.api.call("GET", &path, None, true, &what)?.json, "iid")
            }
        };
        let items = list
            .as_array()
            .ok_or_else(|| protocol(&what, "not a list"))?;
        // Only a merged change: the one whose merge commit this is, else (a fast-forward merge)
        // the one this commit heads. An open change that merely contains the commit is not it.
        let github = matches!(self, Forge::GitHub(_));
        let merged = |c: &&Value| {
            if github {
                c["merged_at"].is_string()
            } else {
                c["state"] == "merged"
            }
        };
        let head = |c: &Value| {
            if github {
                c["head"]["sha"].clone()
            } else {
                c["sha"].clone()
            }
        };
        let pick = items
            .iter()
            .filter(merged)
            .find(|c| c["merge_commit_sha"].as_str() == Some(sha))
            .or_else(|| items.iter().filter(merged).find(|c| head(c) == sha));
        Ok(pick.and_then(|c| c[number_field].as_u64()))
    }

    /// Opens the one issue that carries `marker` (a drifted stack's) or updates it in place;
    /// returns its URL. Found like the sticky comment: by the hidden marker first in the body
    /// *and* by the integration's own identity (GitHub: the login; GitLab: the token's user id),
    /// so an issue a user wrote with the marker pasted in is never edited. A create whose answer
    /// was lost is looked for before re-posting; stray copies of our own are closed (neither
    /// forge lets a CI token delete issues). Only open issues count: when drift returns after
    /// its issue was closed, a new issue is opened (the closed one records the episode it was
    /// opened for, and whoever closed it by hand is not overruled).
    pub fn upsert_issue(
        &self,
        marker: &str,
        title: &str,
        body: &str,
    ) -> Result<String, ForgeError> {
        let shape = self.issue_shape();
        let body = shape.body_with_marker(marker, body)?;
        let title = shorten(title, ISSUE_TITLE_MAX_CHARS);
        let retry = shape.api.retry;
        let mut attempt = 1;
        loop {
            let ours = self.our_open_issues(&shape, marker)?;
            if let Some((first, rest)) = ours.split_first() {
                if first.body != body || first.title != title {
                    shape.update(first.number, shape.edit(&title, &body))?;
                }
                for stray in rest {
                    shape.update(stray.number, shape.close(None, Closed::Duplicate))?;
                }
                return Ok(self.issue_url(first));
            }
            let what = format!("opening the issue {title:?}");
            let mut fields = json!({ "title": title });
            fields[shape.body] = Value::from(body.as_str());
            // Not retried here on a 5xx: it is looked for first.
            match shape.call("POST", &shape.collection, Some(&fields), false, &what) {
                Ok(created) => {
                    // An answer that names no issue is an error, never a second create.
                    let issue = shape
                        .parse(&created.json, &what)?
                        .ok_or_else(|| protocol(&what, "no issue"))?;
                    return Ok(self.issue_url(&issue));
                }
                Err(e) if e.kind == ForgeErrorKind::Unavailable && attempt < retry.attempts => {
                    std::thread::sleep(retry.backoff);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes our open issue(s) carrying `marker` with `body` as their last word; the URL of
    /// the one closed, `None` if there was none.
    pub fn close_issue(&self, marker: &str, body: &str) -> Result<Option<String>, ForgeError> {
        let shape = self.issue_shape();
        let body = shape.body_with_marker(marker, body)?;
        let ours = self.our_open_issues(&shape, marker)?;
        for issue in &ours {
            shape.update(issue.number, shape.close(Some(&body), Closed::Completed))?;
        }
        Ok(ours.first().map(|i| self.issue_url(i)))
    }

    /// Our open issues carrying `marker`, oldest first (every page, bounded). The forge is asked
    /// for the integration's own open issues, and each answer is checked again here (the
    /// marker first in the body, the author ours): a filter the forge ignored cannot make
    /// another's issue ours. Pull requests, which GitHub lists with issues, are left out.
    fn our_open_issues(&self, shape: &IssueShape, marker: &str) -> Result<Vec<Issue>, ForgeError> {
        let me = self.me()?;
        let what = "listing the integration's open issues".to_owned();
        let by = match &me {
            Author::Login(login) => format!("creator={}", crate::commands::run::query_value(login)),
            Author::Id(id) => format!("author_id={id}"),
        };
        let mut ours = Vec::new();
        for page in 1..=MAX_COMMENT_PAGES {
            let path = format!(
                "{}?{}&{by}&per_page=100&page={page}",
                shape.collection, shape.list_open
            );
            let reply = shape.call("GET", &path, None, true, &what)?;
            let items = reply
                .json
                .as_array()
                .ok_or_else(|| protocol(&what, "not a list"))?;
            for i in items {
                let body = i[shape.body].as_str().unwrap_or_default();
                if me.wrote(&i[shape.author])
                    && body.starts_with(marker)
                    && i.get("pull_request").is_none()
                {
                    ours.extend(shape.parse(i, &what)?);
                }
            }
            if !reply.has_next_page {
                ours.sort_by_key(|i| i.number);
                return Ok(ours);
            }
        }
        Err(protocol(
            &what,
            "more than 10,000 open issues by this integration",
        ))
    }

    /// The requests of this forge's issues API.
    fn issue_shape(&self) -> IssueShape<'_> {
        match self {
            Forge::GitHub(g) => IssueShape {
                api: &g.api,
                collection: format!("/repos/{}/issues", g.repository),
                list_open: "state=open",
                body: "body",
                number: "number",
                url: "html_url",
                author: "user",
                update: "PATCH",
                max_body: GITHUB_COMMENT_MAX_CHARS,
                github: true,
            },
            Forge::GitLab(g) => IssueShape {
                api: &g.api,
                collection: format!("/projects/{}/issues", g.project),
                list_open: "state=opened&order_by=created_at&sort=asc",
                body: "description",
                number: "iid",
                url: "web_url",
                author: "author",
                update: "PUT",
                max_body: GITLAB_DESCRIPTION_MAX_CHARS,
                github: false,
            },
        }
    }

    /// The issue's web page: the forge's own link, else one made from what the CI says.
    fn issue_url(&self, issue: &Issue) -> String {
        if let Some(url) = &issue.url {
            return url.clone();
        }
        match self {
            Forge::GitHub(g) => format!(
                "{}/repos/{}/issues/{}",
                g.api.base, g.repository, issue.number
            ),
            Forge::GitLab(g) => match &g.project_url {
                Some(web) => format!("{web}/-/issues/{}", issue.number),
                None => format!(
                    "{}/projects/{}/issues/{}",
                    g.api.base, g.project, issue.number
                ),
            },
        }
    }

    /// Whose comments and issues are airlock's: GitHub's integration login, or the user the
    /// GitLab token is (`GET /user`).
    fn me(&self) -> Result<Author, ForgeError> {
        match self {
            Forge::GitHub(g) => Ok(Author::Login(g.comment_author.clone())),
            Forge::GitLab(g) => {
                let what = "finding the GitLab token's user";
                let user = g.api.call("GET", "/user", None, true, what)?;
                let id = user.json["id"]
                    .as_u64()
                    .ok_or_else(|| protocol(what, "no numeric id"))?;
                Ok(Author::Id(id))
            }
        }
    }

    fn api(&self) -> &Api {
        match self {
            Forge::GitHub(g) => &g.api,
            Forge::GitLab(g) => &g.api,
        }
    }

    /// Our comments on `change` carrying `marker`, oldest first (every page, bounded).
    fn our_comments(&self, change: u64, marker: &str) -> Result<Vec<Comment>, ForgeError> {
        let what = format!("listing the comments of {}", self.change_name(change));
        let me = self.me()?;
        let mut ours = Vec::new();
        for page in 1..=MAX_COMMENT_PAGES {
            let (reply, author_field) = match self {
                Forge::GitHub(g) => {
                    let path = format!(
                        "/repos/{}/issues/{change}/comments?per_page=100&page={page}",
                        g.repository
                    );
                    (g.api.call("GET", &path, None, true, &what)?, "user")
                }
                Forge::GitLab(g) => {
                    let path = format!(
                        "/projects/{}/merge_requests/{change}/notes?sort=asc&order_by=created_at&per_page=100&page={page}",
                        g.project
                    );
                    (g.api.call("GET", &path, None, true, &what)?, "author")
                }
            };
            let items = reply
                .json
                .as_array()
                .ok_or_else(|| protocol(&what, "not a list"))?;
            for c in items {
                let body = c["body"].as_str().unwrap_or_default();
                if me.wrote(&c[author_field]) && body.starts_with(marker) {
                    let id = c["id"]
                        .as_u64()
                        .ok_or_else(|| protocol(&what, "a comment without a numeric id"))?;
                    ours.push(Comment {
                        id,
                        body: body.to_owned(),
                        html_url: c["html_url"].as_str().map(str::to_owned),
                    });
                }
            }
            if !reply.has_next_page {
                return Ok(ours);
            }
        }
        Err(ForgeError::new(
            ForgeErrorKind::Protocol,
            format!(
                "{what}: more than {} comments; airlock stops looking for its own there rather than risk posting a duplicate",
                MAX_COMMENT_PAGES * 100
            ),
        ))
    }

    fn create_comment(&self, change: u64, body: &str) -> Result<Comment, ForgeError> {
        let what = format!(
            "posting the airlock comment on {}",
            self.change_name(change)
        );
        let (path, api) = match self {
            Forge::GitHub(g) => (
                format!("/repos/{}/issues/{change}/comments", g.repository),
                &g.api,
            ),
            Forge::GitLab(g) => (
                format!("/projects/{}/merge_requests/{change}/notes", g.project),
                &g.api,
            ),
        };
        // Not retried here on a 5xx: the caller looks for it first.
        let reply = api.call("POST", &path, Some(&json!({"body": body})), false, &what)?;
        let id = reply.json["id"]
            .as_u64()
            .ok_or_else(|| protocol(&what, "no comment id"))?;
        Ok(Comment {
            id,
            body: body.to_owned(),
            html_url: reply.json["html_url"].as_str().map(str::to_owned),
        })
    }

    fn update_comment(&self, change: u64, id: u64, body: &str) -> Result<(), ForgeError> {
        let what = format!(
            "updating the airlock comment on {}",
            self.change_name(change)
        );
        let body = json!({"body": body});
        match self {
            Forge::GitHub(g) => g.api.call(
                "PATCH",
                &format!("/repos/{}/issues/comments/{id}", g.repository),
                Some(&body),
                true,
                &what,
            ),
            Forge::GitLab(g) => g.api.call(
                "PUT",
                &format!("/projects/{}/merge_requests/{change}/notes/{id}", g.project),
                Some(&body),
                true,
                &what,
            ),
        }
        .map(drop)
    }

    fn delete_comment(&self, change: u64, id: u64) -> Result<(), ForgeError> {
        let what = format!(
            "deleting a duplicate airlock comment on {}",
            self.change_name(change)
        );
        let result = match self {
            Forge::GitHub(g) => g.api.call(
                "DELETE",
                &format!("/repos/{}/issues/comments/{id}", g.repository),
                None,
                true,
                &what,
            ),
            Forge::GitLab(g) => g.api.call(
                "DELETE",
                &format!("/projects/{}/merge_requests/{change}/notes/{id}", g.project),
                None,
                true,
                &what,
            ),
        };
        match result {
            // Already gone (a retried delete, or another job's): what we wanted.
            Err(e) if e.kind == ForgeErrorKind::NotFound => Ok(()),
            other => other.map(drop),
        }
    }

    fn comment_url(&self, change: u64, comment: &Comment) -> String {
        match self {
            Forge::GitHub(g) => comment.html_url.clone().unwrap_or_else(|| {
                format!(
                    "{}/repos/{}/issues/comments/{}",
                    g.api.base, g.repository, comment.id
                )
            }),
            Forge::GitLab(g) => match &g.project_url {
                Some(web) => format!("{web}/-/merge_requests/{change}#note_{}", comment.id),
                None => format!(
                    "{}/projects/{}/merge_requests/{change}/notes/{}",
                    g.api.base, g.project, comment.id
                ),
            },
        }
    }

    fn change_name(&self, change: u64) -> String {
        match self {
            Forge::GitHub(_) => format!("pull request #{change}"),
            Forge::GitLab(_) => format!("merge request !{change}"),
        }
    }
}

/// One of our issues, as either forge lists it.
struct Issue {
    /// GitHub's issue number, GitLab's IID.
    number: u64,
    title: String,
    body: String,
    url: Option<String>,
}

/// Why an issue is closed.
#[derive(Clone, Copy)]
enum Closed {
    /// The drift it reported has cleared.
    Completed,
    /// A stray copy of the issue kept open.
    Duplicate,
}

/// How one forge spells its issues API; `Forge::upsert_issue`/`close_issue` are the one logic
/// ("find ours, create, update, close") over both.
struct IssueShape<'a> {
    api: &'a Api,
    /// `/repos/OWNER/REPO/issues` or `/projects/ID/issues`.
    collection: String,
    /// The list query selecting open issues (oldest first where the forge can sort).
    list_open: &'static str,
    /// The field holding the markdown: `body` / `description`.
    body: &'static str,
    /// The per-repository number: `number` / `iid`.
    number: &'static str,
    /// The web page: `html_url` / `web_url`.
    url: &'static str,
    /// Who opened it: `user` / `author`.
    author: &'static str,
    /// `PATCH` / `PUT`.
    update: &'static str,
    max_body: usize,
    github: bool,
}

impl IssueShape<'_> {
    fn forge(&self) -> &'static str {
        if self.github {
            "GitHub"
        } else {
            "GitLab"
        }
    }

    /// `body` with `marker` first, checked, within the forge's limit (else nothing is sent).
    fn body_with_marker(&self, marker: &str, body: &str) -> Result<String, ForgeError> {
        check_marker(marker)?;
        let body = if body.starts_with(marker) {
            body.to_owned()
        } else {
            format!("{marker}\n{body}")
        };
        let chars = body.chars().count();
        if chars > self.max_body {
            return Err(ForgeError::new(
                ForgeErrorKind::TooLarge,
                format!(
                    "the issue body is {chars} characters; {} takes at most {}: shorten it (nothing was sent)",
                    self.forge(),
                    self.max_body
                ),
            ));
        }
        Ok(body)
    }

    /// The fields that set the title and body.
    fn edit(&self, title: &str, body: &str) -> Value {
        let mut fields = json!({ "title": title });
        fields[self.body] = Value::from(body);
        fields
    }

    /// The fields that close an issue, with `body` as its last word when given.
    fn close(&self, body: Option<&str>, why: Closed) -> Value {
        let mut fields = if self.github {
            let reason = match why {
                Closed::Completed => "completed",
                Closed::Duplicate => "not_planned",
            };
            json!({"state": "closed", "state_reason": reason})
        } else {
            json!({"state_event": "close"})
        };
        if let Some(body) = body {
            fields[self.body] = Value::from(body);
        }
        fields
    }

    fn update(&self, number: u64, fields: Value) -> Result<(), ForgeError> {
        let what = format!("updating issue #{number}");
        let path = format!("{}/{number}", self.collection);
        self.call(self.update, &path, Some(&fields), true, &what)
            .map(drop)
    }

    /// One call, whose refusal for lack of permission names what issues need.
    fn call(
        &self,
        method: &str,
        path: &str,
        fields: Option<&Value>,
        retry_safe: bool,
        what: &str,
    ) -> Result<Reply, ForgeError> {
        self.api
            .call(method, path, fields, retry_safe, what)
            .map_err(|mut e| {
                if e.kind == ForgeErrorKind::Forbidden {
                    e.message.push_str(if self.github {
                        "; drift issues also need `issues: write` in the job's `permissions:`"
                    } else {
                        "; GitLab also answers 403 when the project's Issues feature is off (Settings > General > Visibility, project features, permissions)"
                    });
                }
                e
            })
    }

    /// An issue from the forge's answer; `None` when it is not an object.
    fn parse(&self, v: &Value, what: &str) -> Result<Option<Issue>, ForgeError> {
        if !v.is_object() {
            return Ok(None);
        }
        let number = v[self.number].as_u64().ok_or_else(|| {
            protocol(what, &format!("an issue without a numeric {}", self.number))
        })?;
        Ok(Some(Issue {
            number,
            title: v["title"].as_str().unwrap_or_default().to_owned(),
            body: v[self.body].as_str().unwrap_or_default().to_owned(),
            url: v[self.url].as_str().map(str::to_owned),
        }))
    }
}

struct Comment {
    id: u64,
    body: String,
    html_url: Option<String>,
}

enum Author {
    Login(String),
    Id(u64),
}

impl Author {
    /// Whether the forge's `user` (GitHub) / `author` (GitLab) object is us.
    fn wrote(&self, author: &Value) -> bool {
        match self {
            Author::Login(login) => author["login"].as_str() == Some(login.as_str()),
            Author::Id(id) => author["id"].as_u64() == Some(*id),
        }
    }
}

fn github_context(var: &dyn Fn(&str) -> Option<String>) -> Result<ForgeContext, ForgeError> {
    let need = |name: &str| {
        var(name).ok_or_else(|| {
            config(format!(
                "{name} is not set: GitHub Actions sets it for every job"
            ))
        })
    };
    let repository = need(GITHUB_REPOSITORY)?;
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    match repository.split_once('/') {
        Some((owner, repo))
            if valid_part(owner) && valid_part(repo) && repo != "." && repo != ".." => {}
        _ => {
            return Err(config(format!(
                "{GITHUB_REPOSITORY} is {repository:?}, not OWNER/REPO"
            )))
        }
    }
    let api = Api::new(
        ApiKind::GitHub,
        &need(GITHUB_API_URL)?,
        var(GITHUB_TOKEN),
        GITHUB_API_URL,
    )?;
    let event_name = need(GITHUB_EVENT_NAME)?;
    let event_json = || -> Result<Value, ForgeError> {
        let path = need(GITHUB_EVENT_PATH)?;
        let file = std::fs::File::open(&path)
            .map_err(|e| config(format!("reading {GITHUB_EVENT_PATH} {path}: {e}")))?;
        serde_json::from_reader(file.take(MAX_EVENT_BYTES)).map_err(|e| {
            config(format!(
                "{GITHUB_EVENT_PATH} {path} is not the event's JSON: {e}"
            ))
        })
    };
    let mut change_authors = Vec::new();
    let (event, change, head_sha, base_sha) = match event_name.as_str() {
        "pull_request" | "pull_request_target" => {
            let ev = event_json()?;
            let pr = &ev["pull_request"];
            let author = pr["user"]["login"].as_str().map(str::to_owned);
            change_authors = forge_logins(
                "github",
                &[
                    ("pull_request.user.login", author),
                    (GITHUB_ACTOR, var(GITHUB_ACTOR)),
                ],
            )?;
            let number = pr["number"].as_u64().ok_or_else(|| {
                config(format!("the {event_name} event has no pull_request.number"))
            })?;
            let sha = |side: &str| {
                pr[side]["sha"].as_str().map(str::to_owned).ok_or_else(|| {
                    config(format!(
                        "the {event_name} event has no pull_request.{side}.sha"
                    ))
                })
            };
            // Not GITHUB_SHA: for pull requests it is a synthetic merge commit nobody reviews.
            (
                Event::ChangeRequest,
                Some(number),
                sha("head")?,
                Some(sha("base")?),
            )
        }
        "push" => {
            let ev = event_json()?;
            let branch = need(GITHUB_REF)?
                .strip_prefix("refs/heads/")
                .map(str::to_owned)
                .unwrap_or_default();
            let default = !branch.is_empty()
                && ev["repository"]["default_branch"].as_str() == Some(branch.as_str());
            let before = ev["before"]
                .as_str()
                .filter(|s| !is_zero_sha(s))
                .map(str::to_owned);
            (
                Event::Push { branch, default },
                None,
                need(GITHUB_SHA)?,
                before,
            )
        }
        other => (
            Event::Other(other.to_owned()),
            None,
            need(GITHUB_SHA)?,
            None,
        ),
    };
    check_sha(&head_sha, "the head commit")?;
    if let Some(base) = &base_sha {
        check_sha(base, "the base commit")?;
    }
    let comment_author =
        var(AIRLOCK_GITHUB_COMMENT_AUTHOR).unwrap_or_else(|| "github-actions[bot]".to_owned());
    Ok(ForgeContext {
        forge: Forge::GitHub(GitHub {
            api,
            repository,
            comment_author,
        }),
        change,
        head_sha,
        base_sha,
        event,
        change_authors,
    })
}

fn gitlab_context(var: &dyn Fn(&str) -> Option<String>) -> Result<ForgeContext, ForgeError> {
    let need = |name: &str| {
        var(name).ok_or_else(|| {
            config(format!(
                "{name} is not set: GitLab CI sets it for every job"
            ))
        })
    };
    let project = need(CI_PROJECT_ID)?;
    if project.is_empty() || !project.chars().all(|c| c.is_ascii_digit()) {
        return Err(config(format!(
            "{CI_PROJECT_ID} is {project:?}, not a project ID"
        )));
    }
    let api = Api::new(
        ApiKind::GitLab,
        &need(CI_API_V4_URL)?,
        var(AIRLOCK_GITLAB_TOKEN),
        CI_API_V4_URL,
    )?;
    let mut change_authors = Vec::new();
    let (event, change, head_sha, base_sha) = match var(CI_MERGE_REQUEST_IID) {
        Some(iid) => {
            change_authors =
                forge_logins("gitlab", &[(GITLAB_USER_LOGIN, var(GITLAB_USER_LOGIN))])?;
            let iid: u64 = iid
                .parse()
                .map_err(|_| config(format!("{CI_MERGE_REQUEST_IID} is {iid:?}, not a number")))?;
            // In merged-results pipelines CI_COMMIT_SHA is a merge commit; the source branch's head is what was pushed.
            let head =
                var(CI_MERGE_REQUEST_SOURCE_BRANCH_SHA).map_or_else(|| need(CI_COMMIT_SHA), Ok)?;
            (
                Event::ChangeRequest,
                Some(iid),
                head,
                var(CI_MERGE_REQUEST_DIFF_BASE_SHA),
            )
        }
        None => {
            let head = need(CI_COMMIT_SHA)?;
            let before = var(CI_COMMIT_BEFORE_SHA).filter(|s| !is_zero_sha(s));
            match var(CI_COMMIT_BRANCH) {
                Some(branch) => {
                    let default = var(CI_DEFAULT_BRANCH).as_deref() == Some(branch.as_str());
                    (Event::Push { branch, default }, None, head, before)
                }
                None => (
                    Event::Other("pipeline without a branch".to_owned()),
                    None,
                    head,
                    None,
                ),
            }
        }
    };
    check_sha(&head_sha, "the head commit")?;
    if let Some(base) = &base_sha {
        check_sha(base, "the base commit")?;
    }
    Ok(ForgeContext {
        forge: Forge::GitLab(GitLab {
            api,
            project,
            project_url: var(CI_PROJECT_URL).map(|u| u.trim_end_matches('/').to_owned()),
        }),
        change,
        head_sha,
        base_sha,
        event,
        change_authors,
    })
}

/// The logins the CI names (`(where, login)`, absent ones skipped) as `forge:login`, lower
/// case, each once; one that is not a login is an error (never silently dropped: it names who
/// may not approve).
fn forge_logins(forge: &str, named: &[(&str, Option<String>)]) -> Result<Vec<String>, ForgeError> {
    let mut out: Vec<String> = Vec::new();
    for (source, login) in named {
        let Some(login) = login.as_deref().filter(|l| !l.is_empty()) else {
            continue;
        };
        let login = airlock_store::valid_forge_login(&format!("{forge}:{login}"))
            .map_err(|e| config(format!("{source}: {e}")))?;
        if !out.contains(&login) {
            out.push(login);
        }
    }
    Ok(out)
}

fn config(message: String) -> ForgeError {
    ForgeError::new(ForgeErrorKind::Config, message)
}

fn protocol(what: &str, problem: &str) -> ForgeError {
    ForgeError::new(
        ForgeErrorKind::Protocol,
        format!("{what}: the forge answered {problem}"),
    )
}

/// A full commit id (SHA-1, or SHA-256 repositories): never a branch name or abbreviation, which
/// would end up in a URL path.
fn check_sha(sha: &str, what: &str) -> Result<(), ForgeError> {
    let hex = sha
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if hex && (sha.len() == 40 || sha.len() == 64) {
        Ok(())
    } else {
        Err(config(format!(
            "{what} {sha:?} is not a full commit SHA (40 lowercase hex digits)"
        )))
    }
}

fn is_zero_sha(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c == '0')
}

/// The marker must be one hidden HTML comment: `<!-- airlock:... -->` on one line.
fn check_marker(marker: &str) -> Result<(), ForgeError> {
    let inner = marker
        .strip_prefix("<!--")
        .and_then(|m| m.strip_suffix("-->"));
    match inner {
        Some(inner)
            if !inner.trim().is_empty() && !inner.contains("--") && !inner.contains('\n') && marker.len() <= 200 =>
        {
            Ok(())
        }
        _ => Err(config(format!(
            "the comment marker {marker:?} must be one HTML comment on one line, like <!-- airlock:plan -->"
        ))),
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiKind {
    GitHub,
    GitLab,
}

/// One forge's REST API: base URL, token, the retry loop, and the error messages naming the fix.
#[derive(Debug, Clone)]
struct Api {
    kind: ApiKind,
    /// The API root without a trailing slash, from the CI's variable.
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    retry: RetryPolicy,
}

/// A successful answer.
struct Reply {
    json: Value,
    /// GitHub: a `Link: <...>; rel="next"`; GitLab: a non-empty `x-next-page`.
    has_next_page: bool,
}

impl Api {
    fn new(
        kind: ApiKind,
        base: &str,
        token: Option<String>,
        base_var: &str,
    ) -> Result<Api, ForgeError> {
        let base = base.trim_end_matches('/').to_owned();
        let https = base.starts_with("https://");
        if !(https || base.starts_with("http://")) {
            return Err(config(format!(
                "{base_var} is {base:?}, not an http(s) URL"
            )));
        }
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            // A redirect is reported, not followed: ureq would drop the token on it (rightly) and
            // turn a POST into a GET, so following could only fail less clearly.
            .redirects(0)
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")));
        if https {
            let tls = crate::commands::client::tls_config(None)
                .map_err(|e| config(format!("setting up TLS for {base_var}: {e:#}")))?;
            agent = agent.tls_config(tls);
        }
        Ok(Api {
            kind,
            base,
            token,
            agent: agent.build(),
            retry: RetryPolicy::default(),
        })
    }

    /// Sends one call, retrying as the policy allows: rate limits always (the forge did nothing),
    /// 5xx and lost connections only when `retry_safe` (a repeat cannot duplicate anything).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        retry_safe: bool,
        what: &str,
    ) -> Result<Reply, ForgeError> {
        let token = self.token.as_deref().ok_or_else(|| self.no_token(what))?;
        let url = format!("{}{path}", self.base);
        let attempts = self.retry.attempts.max(1);
        let mut waited = Duration::ZERO;
        let mut backoff = self.retry.backoff;
        let mut attempt = 1;
        loop {
            let mut req = self.agent.request(method, &url);
            req = match self.kind {
                ApiKind::GitHub => req
                    .set("Authorization", &format!("Bearer {token}"))
                    .set("Accept", "application/vnd.github+json")
                    .set("X-GitHub-Api-Version", "2022-11-28"),
                ApiKind::GitLab => req.set("PRIVATE-TOKEN", token),
            };
            let result = match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            };
            let (wait, failure) = match result {
                Ok(resp) => return self.reply(resp, what),
                Err(ureq::Error::Status(status, resp)) => {
                    let limited = rate_limit_wait(status, &resp);
                    let text = read_bounded(resp).unwrap_or_default();
                    let wait = match limited {
                        Some(told) => Some(told.unwrap_or(backoff)),
                        None if status >= 500 && retry_safe => Some(backoff),
                        None => None,
                    };
                    (wait, self.refused(status, &text, what, limited))
                }
                Err(e) => (retry_safe.then_some(backoff), self.unreachable(&e, what)),
            };
            match wait {
                Some(wait)
                    if attempt < attempts
                        && waited
                            .checked_add(wait)
                            .is_some_and(|w| w <= self.retry.max_wait) =>
                {
                    std::thread::sleep(wait);
                    waited += wait;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                _ => return Err(failure),
            }
        }
    }

    fn reply(&self, resp: ureq::Response, what: &str) -> Result<Reply, ForgeError> {
        let has_next_page = match self.kind {
            ApiKind::GitHub => resp
                .header("link")
                .is_some_and(|l| l.split(',').any(|part| part.contains("rel=\"next\""))),
            ApiKind::GitLab => resp
                .header("x-next-page")
                .is_some_and(|p| !p.trim().is_empty()),
        };
        let status = resp.status();
        if !(200..300).contains(&status) {
            let location = resp.header("location").map(|l| printable(l).into_owned());
            return Err(ForgeError::new(
                ForgeErrorKind::Protocol,
                format!(
                    "{what}: {} answered a redirect (HTTP {status}{}); if the repository or project moved, the CI's API URL and names are stale: re-run the job from the new location",
                    self.name(),
                    location.map_or_else(String::new, |l| format!(" to {l}")),
                ),
            ));
        }
        let text = read_bounded(resp).map_err(|e| protocol(what, &e))?;
        let json = if status == 204 || text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| protocol(what, "something that is not JSON"))?
        };
        Ok(Reply {
            json,
            has_next_page,
        })
    }

    fn name(&self) -> &'static str {
        match self.kind {
            ApiKind::GitHub => "GitHub",
            ApiKind::GitLab => "GitLab",
        }
    }

    fn token_var(&self) -> &'static str {
        match self.kind {
            ApiKind::GitHub => GITHUB_TOKEN,
            ApiKind::GitLab => AIRLOCK_GITLAB_TOKEN,
        }
    }

    fn no_token(&self, what: &str) -> ForgeError {
        let fix = match self.kind {
            ApiKind::GitHub => {
                "pass it to the step: `env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}`".to_owned()
            }
            ApiKind::GitLab => GITLAB_TOKEN_FIX.to_owned(),
        };
        ForgeError::new(
            ForgeErrorKind::Unauthorized,
            format!("{what}: {} is not set; {fix}", self.token_var()),
        )
    }

    /// The error for a refused call, naming the fix.
    fn refused(
        &self,
        status: u16,
        text: &str,
        what: &str,
        limited: Option<Option<Duration>>,
    ) -> ForgeError {
        let name = self.name();
        let said = forge_message(text);
        let github = self.kind == ApiKind::GitHub;
        let (kind, fix) = if let Some(told) = limited {
            let wait = told.map_or_else(String::new, |w| {
                format!(" (it asks to wait {} s)", w.as_secs())
            });
            (
                ForgeErrorKind::RateLimited,
                format!(
                    "{name} rate-limits the token{wait}, beyond airlock's retries ({} attempts, {} s of waiting); re-run the job later",
                    self.retry.attempts,
                    self.retry.max_wait.as_secs()
                ),
            )
        } else {
            match status {
                401 if github => (
                    ForgeErrorKind::Unauthorized,
                    "GitHub refused GITHUB_TOKEN (missing, expired or wrong): pass `env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}` to the step".to_owned(),
                ),
                401 => (
                    ForgeErrorKind::Unauthorized,
                    format!("GitLab refused {AIRLOCK_GITLAB_TOKEN} (expired, revoked or wrong); {GITLAB_TOKEN_FIX}"),
                ),
                403 if github => (
                    ForgeErrorKind::Forbidden,
                    "the token lacks the permission: give the job `permissions: { contents: read, pull-requests: write, statuses: write }` in the workflow file (on pull requests from forks GITHUB_TOKEN is read-only)".to_owned(),
                ),
                403 => (
                    ForgeErrorKind::Forbidden,
                    format!("the token lacks the permission: {AIRLOCK_GITLAB_TOKEN} must be a project access token with the `api` scope and at least the Developer role"),
                ),
                404 if github => (
                    ForgeErrorKind::NotFound,
                    format!("check {GITHUB_REPOSITORY} and {GITHUB_API_URL} ({}); GitHub also answers 404 when the token may not see the repository (the workflow's `permissions:`)", self.base),
                ),
                404 => (
                    ForgeErrorKind::NotFound,
                    format!("check {CI_PROJECT_ID} and {CI_API_V4_URL} ({}); GitLab also answers 404 when {AIRLOCK_GITLAB_TOKEN} may not see the project or merge request", self.base),
                ),
                400 | 409 | 422 => (ForgeErrorKind::Invalid, format!("{name} refused the request as invalid")),
                s if s >= 500 => (
                    ForgeErrorKind::Unavailable,
                    format!("{name} failed (after {} attempts); re-run the job", self.retry.attempts),
                ),
                _ => (ForgeErrorKind::Protocol, format!("{name} answered an unexpected status")),
            }
        };
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(" ({name} says: {said})")
        };
        ForgeError::new(kind, format!("{what}: HTTP {status}{said}; {fix}"))
    }

    fn unreachable(&self, e: &ureq::Error, what: &str) -> ForgeError {
        ForgeError::new(
            ForgeErrorKind::Unavailable,
            format!(
                "{what}: could not reach {} at {} ({e}); check the runner's network, then re-run the job",
                self.name(),
                self.base
            ),
        )
    }
}

const GITLAB_TOKEN_FIX: &str = "create a project access token with the `api` scope and the Developer role (Settings > Access tokens) and store it as the masked CI/CD variable AIRLOCK_GITLAB_TOKEN (CI_JOB_TOKEN cannot post merge request notes)";

/// `Some` when the answer is a rate limit (429, or 403 with no requests left or a `Retry-After`),
/// with the wait the forge asks for when it says one.
fn rate_limit_wait(status: u16, resp: &ureq::Response) -> Option<Option<Duration>> {
    let header = |name: &str| resp.header(name).map(str::trim);
    let retry_after = header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let exhausted =
        header("x-ratelimit-remaining") == Some("0") || header("ratelimit-remaining") == Some("0");
    let limited = status == 429 || (status == 403 && (exhausted || retry_after.is_some()));
    if !limited {
        return None;
    }
    let reset = || {
        let at: u64 = header("x-ratelimit-reset")
            .or_else(|| header("ratelimit-reset"))?
            .parse()
            .ok()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Duration::from_secs(at.saturating_sub(now).max(1)))
    };
    Some(retry_after.or_else(|| if exhausted { reset() } else { None }))
}

/// An answer's text, refused beyond [`MAX_RESPONSE_BYTES`].
fn read_bounded(resp: ureq::Response) -> Result<String, String> {
    let mut buf = Vec::new();
    resp.into_reader()
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("an unreadable body ({e})"))?;
    if buf.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(format!("more than {MAX_RESPONSE_BYTES} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "a body that is not UTF-8".to_owned())
}

/// The forge's own explanation in an error body (`message`, GitHub's `errors[].message`,
/// GitLab's `error` or `message` object), shortened and made safe for a terminal.
fn forge_message(text: &str) -> String {
    let said = match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            let mut parts = Vec::new();
            for key in ["message", "error"] {
                match &v[key] {
                    Value::String(s) => parts.push(s.clone()),
                    Value::Null => {}
                    other => parts.push(other.to_string()),
                }
            }
            if let Some(errors) = v["errors"].as_array() {
                for e in errors {
                    parts.push(
                        e["message"]
                            .as_str()
                            .map_or_else(|| e.to_string(), str::to_owned),
                    );
                }
            }
            parts.join("; ")
        }
        Err(_) => text.to_owned(),
    };
    printable(&shorten(said.trim(), 300)).into_owned()
}

#[cfg(test)]
#[path = "../../../tests/forge/standin.rs"]
mod standin;

#[cfg(test)]
mod tests {
    //! The clients against the forge stand-in, which refuses and records any request GitHub's
    //! OpenAPI description or GitLab's documented endpoints do not allow.

    use std::collections::HashMap;
    use std::time::Instant;

    use super::standin::ForgeStandIn;
    use super::*;

    const TOKEN: &str = "ghs_airlock_ci_token";
    const HEAD: &str = "1111111111111111111111111111111111111111";
    const BASE: &str = "2222222222222222222222222222222222222222";
    const MARKER: &str = "<!-- airlock:plan -->";
    const PR: u64 = 7;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            backoff: Duration::from_millis(10),
            max_wait: Duration::from_secs(5),
        }
    }

    fn github_env(f: &ForgeStandIn, dir: &tempfile::TempDir) -> HashMap<String, String> {
        f.github_pr_env(dir.path(), "acme/infra", PR, HEAD, BASE)
            .into_iter()
            .collect()
    }

    fn gitlab_env(f: &ForgeStandIn) -> HashMap<String, String> {
        let mut env: HashMap<_, _> = f.gitlab_mr_env("42", PR, HEAD, BASE).into_iter().collect();
        env.insert(
            "CI_PROJECT_URL".into(),
            "https://gitlab.example/acme/infra".into(),
        );
        env
    }

    fn context(env: &HashMap<String, String>) -> ForgeContext {
        Forge::from_env(&|k| env.get(k).cloned())
            .unwrap()
            .expect("in CI")
    }

    fn github() -> (ForgeStandIn, Forge, tempfile::TempDir) {
        let f = ForgeStandIn::start(TOKEN);
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&github_env(&f, &dir));
        (f, ctx.forge.with_retry(fast()), dir)
    }

    fn gitlab() -> (ForgeStandIn, Forge) {
        let f = ForgeStandIn::start(TOKEN);
        let ctx = context(&gitlab_env(&f));
        (f, ctx.forge.with_retry(fast()))
    }

    fn comments(f: &ForgeStandIn) -> Vec<Value> {
        f.state()["github"]["comments"].as_array().unwrap().clone()
    }

    fn notes(f: &ForgeStandIn) -> Vec<Value> {
        f.state()["gitlab"]["notes"].as_array().unwrap().clone()
    }

    /// Posts a comment as the person `login` (their own token), through the API.
    fn user_comment(f: &ForgeStandIn, url: &str, login: &str, body: &str) -> u64 {
        let token = format!("token-of-{login}");
        f.add_user(&token, login);
        let req = ureq::post(url).set("User-Agent", "a-person");
        let req = if url.contains("/gitlab/") {
            req.set("PRIVATE-TOKEN", &token)
        } else {
            req.set("Authorization", &format!("token {token}"))
        };
        let v: Value = req
            .send_json(json!({"body": body}))
            .unwrap()
            .into_json()
            .unwrap();
        v["id"].as_u64().unwrap()
    }

    #[test]
    fn outside_ci_there_is_no_forge() {
        assert!(Forge::from_env(&|_| None).unwrap().is_none());
        let env = |k: &str| (k == "CI").then(|| "true".to_owned());
        assert!(Forge::from_env(&env).unwrap().is_none());
    }

    #[test]
    fn github_context_comes_from_the_event_not_the_merge_commit() {
        let f = ForgeStandIn::start(TOKEN);
        let dir = tempfile::tempdir().unwrap();
        let env = github_env(&f, &dir);
        let ctx = context(&env);
        assert_eq!(ctx.change, Some(PR));
        assert_eq!(ctx.head_sha, HEAD);
        assert_eq!(ctx.base_sha.as_deref(), Some(BASE));
        assert_eq!(ctx.event, Event::ChangeRequest);

        // A push to the default branch, then to another.
        let env2: HashMap<_, _> = f
            .github_push_env(
                dir.path(),
                "acme/infra",
                "main",
                "main",
                &"0".repeat(40),
                HEAD,
            )
            .into_iter()
            .collect();
        let ctx = context(&env2);
        assert_eq!(
            ctx.event,
            Event::Push {
                branch: "main".into(),
                default: true
            }
        );
        assert_eq!(
            (ctx.change, ctx.base_sha),
            (None, None),
            "a new branch's all-zero `before` is no base"
        );
        let env3: HashMap<_, _> = f
            .github_push_env(dir.path(), "acme/infra", "feature", "main", BASE, HEAD)
            .into_iter()
            .collect();
        let ctx = context(&env3);
        assert_eq!(
            ctx.event,
            Event::Push {
                branch: "feature".into(),
                default: false
            }
        );
        assert_eq!(ctx.base_sha.as_deref(), Some(BASE));

        // Malformed variables are refused with the variable's name.
        for (var, value, needle) in [
            ("GITHUB_REPOSITORY", "acme", "not OWNER/REPO"),
            ("GITHUB_REPOSITORY", "acme/../x", "not OWNER/REPO"),
            ("GITHUB_API_URL", "file:///etc", "not an http(s) URL"),
            (
                "GITHUB_EVENT_PATH",
                "/nonexistent/event.json",
                "reading GITHUB_EVENT_PATH",
            ),
        ] {
            let mut bad = env.clone();
            bad.insert(var.into(), value.into());
            let e = Forge::from_env(&|k| bad.get(k).cloned()).unwrap_err();
            assert_eq!(e.kind, ForgeErrorKind::Config);
            assert!(e.to_string().contains(needle), "{var}={value}: {e}");
        }
        let bad_sha = dir.path().join("bad.json");
        std::fs::write(
            &bad_sha,
            json!({"pull_request": {"number": 7, "head": {"sha": "main"}, "base": {"sha": BASE}}})
                .to_string(),
        )
        .unwrap();
        let mut bad = env.clone();
        bad.insert("GITHUB_EVENT_PATH".into(), bad_sha.to_str().unwrap().into());
        let e = Forge::from_env(&|k| bad.get(k).cloned()).unwrap_err();
        assert!(e.to_string().contains("not a full commit SHA"), "{e}");
        // No token: the context is still known (the plan runs), posting says what to set.
        let mut no_token = env.clone();
        no_token.remove("GITHUB_TOKEN");
        let ctx = context(&no_token);
        let e = ctx.forge.upsert_comment(PR, MARKER, "x").unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Unauthorized);
        assert!(
            e.to_string()
                .contains("GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}"),
            "{e}"
        );
        assert!(f.requests().is_empty(), "nothing sent without a token");
    }

    #[test]
    fn change_authors_are_the_pull_requests_author_and_the_jobs_actor() {
        let f = ForgeStandIn::start(TOKEN);
        let dir = tempfile::tempdir().unwrap();
        let mut env = github_env(&f, &dir);
        let event = dir.path().join("authored.json");
        let write = |login: &str| {
            let pr = json!({"pull_request": {"number": 7, "user": {"login": login},
                "head": {"sha": HEAD}, "base": {"sha": BASE}}});
            std::fs::write(&event, pr.to_string()).unwrap();
        };
        env.insert("GITHUB_EVENT_PATH".into(), event.to_str().unwrap().into());
        write("Alice");
        env.insert("GITHUB_ACTOR".into(), "bob".into());
        assert_eq!(context(&env).change_authors, ["github:alice", "github:bob"]);
        env.insert("GITHUB_ACTOR".into(), "ALICE".into());
        assert_eq!(context(&env).change_authors, ["github:alice"]);
        // A login that is not one is refused, never dropped.
        write("alice\n<b>");
        let e = Forge::from_env(&|k| env.get(k).cloned()).unwrap_err();
        assert!(
            e.to_string()
                .contains("pull_request.user.login: invalid forge login"),
            "{e}"
        );
        // GitLab names who started the merge request pipeline; pushes name nobody.
        let mut gl = gitlab_env(&f);
        gl.insert("GITLAB_USER_LOGIN".into(), "Carol".into());
        assert_eq!(context(&gl).change_authors, ["gitlab:carol"]);
        let mut push: HashMap<_, _> = f
            .gitlab_push_env("42", "main", "main", BASE, HEAD)
            .into_iter()
            .collect();
        push.insert("GITLAB_USER_LOGIN".into(), "carol".into());
        assert!(context(&push).change_authors.is_empty());
    }

    #[test]
    fn gitlab_context_reads_the_merge_request_pipeline() {
        let f = ForgeStandIn::start(TOKEN);
        let mut env = gitlab_env(&f);
        let ctx = context(&env);
        assert_eq!(
            (ctx.change, ctx.head_sha.as_str(), ctx.base_sha.as_deref()),
            (Some(7), HEAD, Some(BASE))
        );
        // Merged-results pipelines: the source branch's head, not the merge commit.
        env.insert("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA".into(), BASE.into());
        assert_eq!(context(&env).head_sha, BASE);
        env.insert("CI_PROJECT_ID".into(), "42/../1".into());
        let e = Forge::from_env(&|k| env.get(k).cloned()).unwrap_err();
        assert!(e.to_string().contains("not a project ID"), "{e}");
        // A branch pipeline.
        let push: HashMap<_, _> = f
            .gitlab_push_env("42", "main", "main", BASE, HEAD)
            .into_iter()
            .collect();
        let ctx = context(&push);
        assert_eq!(
            ctx.event,
            Event::Push {
                branch: "main".into(),
                default: true
            }
        );
        assert_eq!((ctx.change, ctx.base_sha.as_deref()), (None, Some(BASE)));
        // Both forges at once is ambiguous.
        env.insert("GITHUB_ACTIONS".into(), "true".into());
        assert!(Forge::from_env(&|k| env.get(k).cloned()).is_err());
    }

    #[test]
    fn github_comment_is_created_once_then_updated_in_place() {
        let (f, forge, _dir) = github();
        let first = forge.upsert_comment(PR, MARKER, "plan 1").unwrap();
        let second = forge.upsert_comment(PR, MARKER, "plan 2").unwrap();
        let third = forge.upsert_comment(PR, MARKER, "plan 3").unwrap();
        assert_eq!(
            (&first, &second),
            (&third, &third),
            "the same comment's URL every time"
        );
        assert!(third.contains("/pull/7#issuecomment-"), "{third}");
        let all = comments(&f);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0]["body"], format!("{MARKER}\nplan 3"));
        assert_eq!(all[0]["issue"], PR);
        let ops: Vec<_> = f
            .requests()
            .into_iter()
            .filter_map(|r| r.operation)
            .collect();
        assert_eq!(
            ops.iter().filter(|o| *o == "issues/create-comment").count(),
            1,
            "{ops:?}"
        );
        assert_eq!(
            ops.iter().filter(|o| *o == "issues/update-comment").count(),
            2,
            "{ops:?}"
        );
        f.assert_no_violations();
    }

    #[test]
    fn github_a_user_comment_carrying_the_marker_is_never_touched() {
        let (f, forge, _dir) = github();
        let url = format!("{}/repos/acme/infra/issues/{PR}/comments", f.url_github());
        let pasted = format!("{MARKER}\nI copied airlock's marker");
        let theirs = user_comment(&f, &url, "mallory", &pasted);
        forge.upsert_comment(PR, MARKER, "plan 1").unwrap();
        forge.upsert_comment(PR, MARKER, "plan 2").unwrap();
        let all = comments(&f);
        assert_eq!(all.len(), 2, "{all:#?}");
        let mine = all.iter().find(|c| c["id"] == theirs).unwrap();
        assert_eq!(mine["body"], pasted.as_str());
        assert_eq!(mine["updated_at"], mine["created_at"]);
        let ours = all.iter().find(|c| c["id"] != theirs).unwrap();
        assert_eq!(ours["body"], format!("{MARKER}\nplan 2"));
        assert!(
            !f.requests()
                .iter()
                .any(|r| r.path.ends_with(&format!("/comments/{theirs}"))),
            "no request addressed the user's comment"
        );
        f.assert_no_violations();
    }

    fn issues(f: &ForgeStandIn) -> Vec<Value> {
        f.state()["github"]["issues"].as_array().unwrap().clone()
    }

    #[test]
    fn github_drift_issue_is_opened_once_updated_closed_and_user_issues_are_left_alone() {
        let (f, forge, _dir) = github();
        const DRIFT: &str = "<!-- airlock:drift:prod/db -->";
        // A person's issue with the marker pasted in.
        let token = "token-of-mallory";
        f.add_user(token, "mallory");
        let url = format!("{}/repos/acme/infra/issues", f.url_github());
        let pasted = format!("{DRIFT}\nI copied airlock's marker");
        let theirs: Value = ureq::post(&url)
            .set("User-Agent", "a-person")
            .set("Authorization", &format!("token {token}"))
            .send_json(json!({"title": "mine", "body": pasted}))
            .unwrap()
            .into_json()
            .unwrap();
        let opened = forge
            .upsert_issue(DRIFT, "drift: prod/db", "1 drifted")
            .unwrap();
        forge
            .upsert_issue(DRIFT, "drift: prod/db", "1 drifted")
            .unwrap();
        forge
            .upsert_issue(DRIFT, "drift: prod/db", "2 drifted")
            .unwrap();
        let all = issues(&f);
        assert_eq!(all.len(), 2, "opened once: {all:#?}");
        let ours = all
            .iter()
            .find(|i| i["number"] != theirs["number"])
            .unwrap();
        assert_eq!(ours["body"], format!("{DRIFT}\n2 drifted"));
        assert!(
            opened.ends_with(&format!("/issues/{}", ours["number"])),
            "{opened}"
        );
        let closed = forge.close_issue(DRIFT, "drift cleared").unwrap();
        assert_eq!(closed.as_deref(), Some(opened.as_str()));
        let all = issues(&f);
        let ours = all
            .iter()
            .find(|i| i["number"] != theirs["number"])
            .unwrap();
        assert_eq!(
            (ours["state"].as_str(), ours["body"].as_str()),
            (
                Some("closed"),
                Some(format!("{DRIFT}\ndrift cleared").as_str())
            )
        );
        let mine = all
            .iter()
            .find(|i| i["number"] == theirs["number"])
            .unwrap();
        assert_eq!(
            (mine["state"].as_str(), mine["body"].as_str()),
            (Some("open"), Some(pasted.as_str()))
        );
        // Nothing open: closing again is a no-op; drifting again opens a new issue.
        assert_eq!(forge.close_issue(DRIFT, "x").unwrap(), None);
        forge
            .upsert_issue(DRIFT, "drift: prod/db", "again")
            .unwrap();
        assert_eq!(issues(&f).len(), 3);
        let n = theirs["number"].as_u64().unwrap();
        assert!(
            !f.requests()
                .iter()
                .any(|r| r.method == "PATCH" && r.path.ends_with(&format!("/issues/{n}"))),
            "no request edited the user's issue"
        );
        f.assert_no_violations();
    }

    #[test]
    fn github_a_lost_issue_create_answer_does_not_duplicate_the_issue() {
        let (f, forge, _dir) = github();
        const DRIFT: &str = "<!-- airlock:drift:prod/app -->";
        f.fail_after_next("POST", "/repos/acme/infra/issues$", 1, 502);
        forge
            .upsert_issue(DRIFT, "drift: prod/app", "drifted")
            .unwrap();
        assert_eq!(issues(&f).len(), 1);
        f.assert_no_violations();
    }

    #[test]
    fn github_finds_its_comment_beyond_the_first_page() {
        let (f, forge, _dir) = github();
        let url = format!("{}/repos/acme/infra/issues/{PR}/comments", f.url_github());
        for i in 0..105 {
            user_comment(&f, &url, "reviewer", &format!("comment {i}"));
        }
        forge.upsert_comment(PR, MARKER, "plan 1").unwrap();
        forge.upsert_comment(PR, MARKER, "plan 2").unwrap();
        let ours: Vec<_> = comments(&f)
            .into_iter()
            .filter(|c| c["user"]["login"] == "github-actions[bot]")
            .collect();
        assert_eq!(ours.len(), 1);
        assert!(f.requests().iter().any(|r| r.query["page"] == "2"));
        f.assert_no_violations();
    }

    #[test]
    fn github_statuses_go_pending_then_success_on_the_head_commit() {
        let (f, forge, _dir) = github();
        forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "planning", None)
            .unwrap();
        forge
            .set_status(
                HEAD,
                "airlock/app",
                StatusState::Success,
                &"approved ".repeat(40),
                Some("https://airlock.example/runs/r1"),
            )
            .unwrap();
        let statuses = f.state()["github"]["statuses"].as_array().unwrap().clone();
        let states: Vec<_> = statuses
            .iter()
            .map(|s| (s["sha"].as_str().unwrap(), s["state"].as_str().unwrap()))
            .collect();
        assert_eq!(states, [(HEAD, "pending"), (HEAD, "success")]);
        assert_eq!(statuses[1]["context"], "airlock/app");
        assert_eq!(statuses[1]["target_url"], "https://airlock.example/runs/r1");
        assert_eq!(
            statuses[1]["description"].as_str().unwrap().chars().count(),
            140,
            "shortened to GitHub's limit"
        );
        // A ref instead of a commit never reaches a URL.
        let e = forge
            .set_status("main", "airlock/app", StatusState::Error, "x", None)
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Config);
        f.assert_no_violations();
    }

    #[test]
    fn github_retries_a_502_and_a_429_with_retry_after() {
        let (f, forge, _dir) = github();
        f.fail_next("GET", r"/issues/7/comments$", 2, 502, &[]);
        f.fail_next("POST", r"/statuses/", 1, 429, &[("Retry-After", "1")]);
        forge.upsert_comment(PR, MARKER, "plan").unwrap();
        let started = Instant::now();
        forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "planning", None)
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "waited as Retry-After said"
        );
        let statuses: Vec<_> = f
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/statuses/"))
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses, [429, 201]);
        assert_eq!(comments(&f).len(), 1);
        assert_eq!(f.state()["github"]["statuses"].as_array().unwrap().len(), 1);
        // The primary rate limit: 403 with no requests left, waited out until its reset.
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1;
        let reset = reset.to_string();
        f.fail_next(
            "PATCH",
            r"/issues/comments/\d+$",
            1,
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ],
        );
        forge.upsert_comment(PR, MARKER, "plan 2").unwrap();
        let patches: Vec<_> = f
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .map(|r| r.status)
            .collect();
        assert_eq!(patches, [403, 200]);
        assert_eq!(comments(&f)[0]["body"], format!("{MARKER}\nplan 2"));
        f.assert_no_violations();
    }

    #[test]
    fn github_a_lost_create_answer_does_not_duplicate_the_comment() {
        let (f, forge, _dir) = github();
        // The comment is created, but the answer is a 502 (a proxy timed out): looked for, found, not re-posted.
        f.fail_after_next("POST", r"/issues/7/comments$", 1, 502);
        forge.upsert_comment(PR, MARKER, "plan").unwrap();
        assert_eq!(comments(&f).len(), 1);
        // A create refused with 502 that did not take effect is posted again.
        let (f, forge, _dir) = github();
        f.fail_next("POST", r"/issues/7/comments$", 1, 503, &[]);
        forge.upsert_comment(PR, MARKER, "plan").unwrap();
        assert_eq!(comments(&f).len(), 1);
        f.assert_no_violations();
    }

    #[test]
    fn github_stray_copies_of_our_comment_are_removed() {
        let (f, forge, _dir) = github();
        let url = format!("{}/repos/acme/infra/issues/{PR}/comments", f.url_github());
        // Two jobs raced and both posted (as the CI identity).
        for _ in 0..2 {
            ureq::post(&url)
                .set("User-Agent", "t")
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .send_json(json!({"body": format!("{MARKER}\nold")}))
                .unwrap();
        }
        forge.upsert_comment(PR, MARKER, "new").unwrap();
        let all = comments(&f);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0]["body"], format!("{MARKER}\nnew"));
        f.assert_no_violations();
    }

    #[test]
    fn github_errors_name_the_fix_and_are_bounded() {
        let (f, forge, _dir) = github();
        f.fail_next("GET", r"/issues/7/comments$", 1, 403, &[]);
        let e = forge.upsert_comment(PR, MARKER, "plan").unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Forbidden);
        assert!(e.to_string().contains("pull-requests: write"), "{e}");
        f.fail_next("POST", r"/statuses/", 1, 404, &[]);
        let e = forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "p", None)
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::NotFound);
        assert!(
            e.to_string().contains("GITHUB_REPOSITORY") && e.to_string().contains("permissions:"),
            "{e}"
        );
        f.fail_next("POST", r"/statuses/", 1, 401, &[]);
        let e = forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "p", None)
            .unwrap_err();
        assert!(e.to_string().contains("secrets.GITHUB_TOKEN"), "{e}");
        // Neither 401, 403 nor 404 is retried.
        assert_eq!(f.requests().len(), 3);

        // A 5xx that does not end: the configured attempts, then an error.
        f.fail_next("POST", r"/statuses/", 4, 502, &[]);
        let e = forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "p", None)
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Unavailable);
        assert_eq!(f.requests().len(), 3 + 4);
        // A rate limit whose reset is an hour away fails at once rather than blocking the job.
        let reset = (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600)
            .to_string();
        f.fail_next(
            "GET",
            r"/comments$",
            1,
            403,
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ],
        );
        let started = Instant::now();
        let e = forge.upsert_comment(PR, MARKER, "plan").unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::RateLimited);
        assert!(e.to_string().contains("re-run the job later"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // Hostile rate-limit headers (a wait that overflows, garbage) neither panic nor block.
        f.fail_next(
            "POST",
            r"/statuses/",
            1,
            429,
            &[("Retry-After", "18446744073709551615")],
        );
        let e = forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "p", None)
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::RateLimited);
        f.fail_next(
            "POST",
            r"/statuses/",
            1,
            429,
            &[("Retry-After", "soon"), ("x-ratelimit-reset", "-5")],
        );
        forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "p", None)
            .unwrap();
        // A body of exactly the budget fits GitHub's limit (the stand-in enforces it).
        let budget = forge.comment_budget(MARKER);
        forge
            .upsert_comment(PR, MARKER, &"é".repeat(budget))
            .unwrap();
        // A body over GitHub's limit is refused before anything is sent.
        let before = f.requests().len();
        let e = forge
            .upsert_comment(PR, MARKER, &"x".repeat(GITHUB_COMMENT_MAX_CHARS))
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::TooLarge);
        assert_eq!(f.requests().len(), before);
        assert!(f.requests().iter().all(|r| r.violations.is_empty()));
    }

    #[test]
    fn hostile_or_malformed_answers_are_errors_not_panics() {
        let (f, forge, _dir) = github();
        let list = r"/issues/7/comments$";
        for (raw, needle) in [
            ("{\"not\": \"a list\"}", "not a list"),
            ("<html>", "not JSON"),
            ("[{\"id\": \"x\", \"user\": {\"login\": \"github-actions[bot]\"}, \"body\": \"<!-- airlock:plan -->\"}]", "numeric id"),
        ] {
            f.answer_next("GET", list, 200, &[], raw);
            let e = forge.upsert_comment(PR, MARKER, "plan").unwrap_err();
            assert_eq!(e.kind, ForgeErrorKind::Protocol, "{raw}: {e}");
            assert!(e.to_string().contains(needle), "{raw}: {e}");
        }
        // A comment by someone else, or without the marker first, is not ours whatever its shape.
        f.answer_next(
            "GET",
            list,
            200,
            &[],
            "[{\"id\": 1, \"user\": null, \"body\": 5}, {\"id\": 2}]",
        );
        forge.upsert_comment(PR, MARKER, "plan").unwrap();
        assert_eq!(comments(&f).len(), 1);
        // An error body with terminal escapes is shown inert.
        f.answer_next(
            "POST",
            r"/statuses/",
            422,
            &[],
            "{\"message\": \"\\u001b[2Jgone\"}",
        );
        let e = forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "p", None)
            .unwrap_err();
        assert!(
            !e.to_string().contains('\u{1b}') && e.to_string().contains("gone"),
            "{e}"
        );
        // A redirect (a renamed repository) is reported, not followed with or without the token.
        let moved = format!(
            "{}/repos/acme/infra-renamed/issues/7/comments",
            f.url_github()
        );
        f.answer_next(
            "GET",
            list,
            301,
            &[("Location", &moved)],
            "{\"message\": \"Moved Permanently\"}",
        );
        let e = forge.upsert_comment(PR, MARKER, "plan").unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains("redirect (HTTP 301"), "{e}");
        assert!(
            !f.requests().iter().any(|r| r.path.contains("renamed")),
            "{moved} not followed"
        );
        // A create answered without an id is an error, not a second create.
        f.answer_next("POST", r"/issues/8/comments$", 201, &[], "{}");
        let e = forge.upsert_comment(8, MARKER, "plan").unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Protocol, "{e}");
        let posts = f
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/8/comments"))
            .count();
        assert_eq!(posts, 1);
    }

    #[test]
    fn github_change_for_a_merge_commit() {
        let (f, forge, _dir) = github();
        let merge = "4444444444444444444444444444444444444444";
        f.add_change("github", "acme/infra", 12, HEAD, Some(merge));
        assert_eq!(forge.change_for_commit(merge).unwrap(), Some(12));
        assert_eq!(forge.change_for_commit(BASE).unwrap(), None);
        // An open pull request that contains a commit is not where it was merged from.
        f.add_change("github", "acme/infra", 13, BASE, None);
        assert_eq!(forge.change_for_commit(BASE).unwrap(), None);
        // A fast-forward merge: the merged pull request this commit heads.
        assert_eq!(forge.change_for_commit(HEAD).unwrap(), Some(12));
        f.assert_no_violations();
    }

    #[test]
    fn gitlab_note_is_created_once_then_updated_and_user_notes_are_left_alone() {
        let (f, forge) = gitlab();
        let url = format!("{}/projects/42/merge_requests/{PR}/notes", f.url_gitlab());
        let pasted = format!("{MARKER}\npasted by a person");
        let theirs = user_comment(&f, &url, "mallory", &pasted);
        let a = forge.upsert_comment(PR, MARKER, "plan 1").unwrap();
        forge.upsert_comment(PR, MARKER, "plan 2").unwrap();
        let c = forge.upsert_comment(PR, MARKER, "plan 3").unwrap();
        assert_eq!(a, c);
        assert!(
            c.starts_with("https://gitlab.example/acme/infra/-/merge_requests/7#note_"),
            "{c}"
        );
        let all = notes(&f);
        assert_eq!(all.len(), 2);
        assert_eq!(
            all.iter().find(|n| n["id"] == theirs).unwrap()["body"],
            pasted.as_str()
        );
        assert_eq!(
            all.iter().find(|n| n["id"] != theirs).unwrap()["body"],
            format!("{MARKER}\nplan 3")
        );
        f.assert_no_violations();
    }

    #[test]
    fn gitlab_statuses_pending_then_success_and_errors_name_the_fix() {
        let (f, forge) = gitlab();
        forge
            .set_status(HEAD, "airlock/app", StatusState::Pending, "planning", None)
            .unwrap();
        // GitLab refuses pending -> pending; it already is.
        forge
            .set_status(
                HEAD,
                "airlock/app",
                StatusState::Pending,
                "needs 1 approval",
                None,
            )
            .unwrap();
        forge
            .set_status(HEAD, "airlock/app", StatusState::Failure, "denied", None)
            .unwrap();
        forge
            .set_status(
                HEAD,
                "airlock/app",
                StatusState::Success,
                "approved",
                Some("https://airlock.example/r"),
            )
            .unwrap();
        let states: Vec<_> = f.state()["gitlab"]["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["status"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(states, ["pending", "failed", "success"]);
        let refused: Vec<_> = f
            .requests()
            .into_iter()
            .filter(|r| r.status >= 400)
            .collect();
        assert_eq!(
            refused.len(),
            1,
            "only the pending -> pending transition: {refused:#?}"
        );

        f.fail_next("POST", r"/statuses/", 1, 502, &[]);
        f.fail_next("POST", r"/statuses/", 1, 429, &[("Retry-After", "1")]);
        forge
            .set_status(
                HEAD,
                "airlock/other",
                StatusState::Pending,
                "planning",
                None,
            )
            .unwrap();
        f.fail_next("GET", r"/notes$", 1, 403, &[]);
        let e = forge.upsert_comment(PR, MARKER, "x").unwrap_err();
        assert!(e.to_string().contains("`api` scope"), "{e}");
        f.fail_next("GET", r"/user$", 1, 401, &[]);
        let e = forge.upsert_comment(PR, MARKER, "x").unwrap_err();
        assert!(
            e.to_string().contains("AIRLOCK_GITLAB_TOKEN")
                && e.to_string().contains("CI_JOB_TOKEN"),
            "{e}"
        );
        f.fail_next("POST", r"/statuses/", 1, 404, &[]);
        let e = forge
            .set_status(HEAD, "airlock/app", StatusState::Error, "x", None)
            .unwrap_err();
        assert!(e.to_string().contains("CI_PROJECT_ID"), "{e}");
        let e = forge
            .upsert_comment(PR, MARKER, &"x".repeat(GITLAB_NOTE_MAX_CHARS))
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::TooLarge);
        // Apart from GitLab's own transition refusal above, nothing the documented API refuses.
        let bad: Vec<_> = f
            .requests()
            .into_iter()
            .filter(|r| {
                !r.violations.is_empty()
                    && !r
                        .violations
                        .iter()
                        .all(|v| v.contains("Cannot transition status"))
            })
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn gitlab_change_for_a_merge_commit() {
        let (f, forge) = gitlab();
        let merge = "5555555555555555555555555555555555555555";
        f.add_change("gitlab", "42", 9, HEAD, Some(merge));
        assert_eq!(forge.change_for_commit(merge).unwrap(), Some(9));
        f.add_change("gitlab", "42", 10, BASE, None);
        assert_eq!(forge.change_for_commit(BASE).unwrap(), None);
        f.assert_no_violations();
    }

    fn gitlab_issues(f: &ForgeStandIn) -> Vec<Value> {
        f.state()["gitlab"]["issues"].as_array().unwrap().clone()
    }

    /// Opens an issue on project 42 as the person `login` (their own token), through the API.
    fn user_issue(f: &ForgeStandIn, login: &str, description: &str) -> u64 {
        let token = format!("token-of-{login}");
        f.add_user(&token, login);
        let v: Value = ureq::post(&format!("{}/projects/42/issues", f.url_gitlab()))
            .set("PRIVATE-TOKEN", &token)
            .send_json(json!({"title": "mine", "description": description}))
            .unwrap()
            .into_json()
            .unwrap();
        v["iid"].as_u64().unwrap()
    }

    /// The CI's project access token sees project 42 only, as a real one does.
    fn gitlab_project_42() -> (ForgeStandIn, Forge) {
        let (f, forge) = gitlab();
        f.gitlab_member_only_of(TOKEN, &["42"]);
        (f, forge)
    }

    #[test]
    fn gitlab_drift_issue_is_opened_once_updated_closed_and_user_issues_are_left_alone() {
        let (f, forge) = gitlab_project_42();
        const DRIFT: &str = "<!-- airlock:drift:prod/db -->";
        let pasted = format!("{DRIFT}\nI copied airlock's marker");
        let theirs = user_issue(&f, "mallory", &pasted);
        let opened = forge
            .upsert_issue(DRIFT, "drift: prod/db", "1 drifted")
            .unwrap();
        forge
            .upsert_issue(DRIFT, "drift: prod/db", "1 drifted")
            .unwrap();
        let updated = forge
            .upsert_issue(DRIFT, "drift: prod/db", "2 drifted")
            .unwrap();
        assert_eq!(opened, updated);
        let all = gitlab_issues(&f);
        assert_eq!(all.len(), 2, "opened once: {all:#?}");
        let ours = all.iter().find(|i| i["iid"] != theirs).unwrap();
        assert_eq!(ours["description"], format!("{DRIFT}\n2 drifted"));
        assert_eq!(ours["title"], "drift: prod/db");
        assert_eq!(
            opened,
            format!("https://gitlab.example/project-42/-/issues/{}", ours["iid"])
        );
        let ops: Vec<_> = f
            .requests()
            .into_iter()
            .filter_map(|r| r.operation)
            .collect();
        let count = |op: &str| ops.iter().filter(|o| *o == op).count();
        assert_eq!(
            count("POST /projects/:id/issues"),
            2,
            "the person's and ours: {ops:?}"
        );
        assert_eq!(
            count("PUT /projects/:id/issues/:issue_iid"),
            1,
            "an unchanged issue is not rewritten: {ops:?}"
        );
        // Only the token's own open issues are asked for.
        let list = f
            .requests()
            .into_iter()
            .find(|r| r.operation.as_deref() == Some("GET /projects/:id/issues"))
            .unwrap();
        assert_eq!(
            (
                list.query["author_id"].as_str(),
                list.query["state"].as_str()
            ),
            (Some("41898282"), Some("opened"))
        );

        let closed = forge.close_issue(DRIFT, "drift cleared").unwrap();
        assert_eq!(closed.as_deref(), Some(opened.as_str()));
        let all = gitlab_issues(&f);
        let ours = all.iter().find(|i| i["iid"] != theirs).unwrap();
        assert_eq!(
            (ours["state"].as_str(), ours["description"].as_str()),
            (
                Some("closed"),
                Some(format!("{DRIFT}\ndrift cleared").as_str())
            )
        );
        let mine = all.iter().find(|i| i["iid"] == theirs).unwrap();
        assert_eq!(
            (mine["state"].as_str(), mine["description"].as_str()),
            (Some("opened"), Some(pasted.as_str()))
        );
        // Nothing open: closing again is a no-op; drifting again opens a new issue, as on
        // GitHub (the closed one stays closed).
        assert_eq!(forge.close_issue(DRIFT, "x").unwrap(), None);
        let again = forge
            .upsert_issue(DRIFT, "drift: prod/db", "again")
            .unwrap();
        assert_ne!(again, opened);
        let all = gitlab_issues(&f);
        assert_eq!(all.len(), 3);
        assert_eq!(
            all.iter().filter(|i| i["state"] == "opened").count(),
            2,
            "{all:#?}"
        );
        assert!(
            !f.requests()
                .iter()
                .any(|r| r.method == "PUT" && r.path.ends_with(&format!("/issues/{theirs}"))),
            "no request edited the user's issue"
        );
        f.assert_no_violations();
    }

    #[test]
    fn gitlab_a_lost_issue_create_is_looked_up_and_strays_are_closed() {
        let (f, forge) = gitlab_project_42();
        const DRIFT: &str = "<!-- airlock:drift:prod/app -->";
        // Created, but the answer is a 502: looked for, found, not re-posted.
        f.fail_after_next("POST", "/projects/42/issues$", 1, 502);
        forge
            .upsert_issue(DRIFT, "drift: prod/app", "drifted")
            .unwrap();
        assert_eq!(gitlab_issues(&f).len(), 1);
        // Refused with a 503 that took no effect: posted again.
        const OTHER: &str = "<!-- airlock:drift:prod/web -->";
        f.fail_next("POST", "/projects/42/issues$", 1, 503, &[]);
        forge
            .upsert_issue(OTHER, "drift: prod/web", "drifted")
            .unwrap();
        assert_eq!(gitlab_issues(&f).len(), 2);
        // Two jobs raced and both opened one (as the CI identity): the newer is closed.
        ureq::post(&format!("{}/projects/42/issues", f.url_gitlab()))
            .set("PRIVATE-TOKEN", TOKEN)
            .send_json(json!({"title": "drift: prod/app", "description": format!("{DRIFT}\nold")}))
            .unwrap();
        forge
            .upsert_issue(DRIFT, "drift: prod/app", "newest")
            .unwrap();
        let all = gitlab_issues(&f);
        let app: Vec<_> = all
            .iter()
            .filter(|i| i["description"].as_str().unwrap().starts_with(DRIFT))
            .map(|i| (i["iid"].as_u64().unwrap(), i["state"].as_str().unwrap()))
            .collect();
        assert_eq!(app, [(1, "opened"), (3, "closed")], "{all:#?}");
        assert_eq!(all[0]["description"], format!("{DRIFT}\nnewest"));
        f.assert_no_violations();
    }

    #[test]
    fn gitlab_hostile_issue_answers_are_errors_and_never_a_duplicate() {
        let (f, forge) = gitlab_project_42();
        const DRIFT: &str = "<!-- airlock:drift:prod/db -->";
        let list = r"/projects/42/issues$";
        let posts = |f: &ForgeStandIn| {
            f.requests()
                .into_iter()
                .filter(|r| r.method == "POST" && r.path.ends_with("/issues"))
                .count()
        };
        for (path, raw, needle) in [
            (list, "{\"not\": \"a list\"}", "not a list"),
            (list, "<html>", "not JSON"),
            (
                list,
                "[{\"iid\": \"x\", \"author\": {\"id\": 41898282}, \"description\": \"<!-- airlock:drift:prod/db -->\"}]",
                "numeric iid",
            ),
            (r"/user$", "{\"id\": \"41898282\"}", "no numeric id"),
        ] {
            f.answer_next("GET", path, 200, &[], raw);
            let e = forge.upsert_issue(DRIFT, "drift", "x").unwrap_err();
            assert_eq!(e.kind, ForgeErrorKind::Protocol, "{raw}: {e}");
            assert!(e.to_string().contains(needle), "{raw}: {e}");
            let e = forge.close_issue(DRIFT, "x");
            assert!(e.is_ok(), "the answer was used once: {e:?}");
        }
        assert_eq!(posts(&f), 0, "no issue opened on an answer not understood");
        // Issues that are not ours, whatever their shape, are never taken for ours: another
        // author, an author given as a string, no author, the marker not first.
        f.answer_next(
            "GET",
            list,
            200,
            &[],
            &json!([
                {"iid": 90, "author": {"id": 7}, "description": DRIFT},
                {"iid": 91, "author": {"id": "41898282"}, "description": DRIFT},
                {"iid": 92, "author": null, "description": DRIFT},
                {"iid": 93, "author": {"id": 41898282}, "description": format!("see {DRIFT}")},
                {"iid": 94, "author": {"id": 41898282}, "description": 5},
                "an issue",
            ])
            .to_string(),
        );
        forge.upsert_issue(DRIFT, "drift", "x").unwrap();
        assert_eq!(posts(&f), 1);
        assert!(
            !f.requests().iter().any(|r| r.path.contains("/issues/9")),
            "no request addressed an issue that is not ours"
        );
        // A create answered with something that names no issue: an error, not a second create;
        // the next run finds the issue it made.
        const NEXT: &str = "<!-- airlock:drift:prod/next -->";
        f.answer_after_next("POST", list, 201, "{}");
        let e = forge.upsert_issue(NEXT, "drift", "x").unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Protocol, "{e}");
        assert_eq!(posts(&f), 2);
        forge.upsert_issue(NEXT, "drift", "y").unwrap();
        assert_eq!(posts(&f), 2);
        assert_eq!(gitlab_issues(&f).len(), 2);
        // An error body with terminal escapes is shown inert; a 403 names the Issues feature.
        f.answer_next(
            "POST",
            list,
            403,
            &[],
            "{\"message\": \"\\u001b[2J403 Forbidden\"}",
        );
        let e = forge
            .upsert_issue("<!-- airlock:drift:prod/x -->", "drift", "x")
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Forbidden);
        assert!(
            !e.to_string().contains('\u{1b}') && e.to_string().contains("Issues feature"),
            "{e}"
        );
        // A redirect is reported, not followed.
        f.answer_next(
            "GET",
            list,
            301,
            &[(
                "Location",
                "https://elsewhere.example/api/v4/projects/42/issues",
            )],
            "{}",
        );
        let e = forge.upsert_issue(DRIFT, "drift", "x").unwrap_err();
        assert!(e.to_string().contains("redirect (HTTP 301"), "{e}");
        assert!(f
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/gitlab/api/v4/")));
    }

    #[test]
    fn gitlab_issue_limits_and_another_project_are_refused_with_the_fix() {
        let (f, forge) = gitlab_project_42();
        const DRIFT: &str = "<!-- airlock:drift:prod/db -->";
        // A description of exactly GitLab's limit is accepted (the stand-in enforces it) ...
        let budget = GITLAB_DESCRIPTION_MAX_CHARS - DRIFT.chars().count() - 1;
        forge
            .upsert_issue(DRIFT, &"t".repeat(300), &"é".repeat(budget))
            .unwrap();
        let all = gitlab_issues(&f);
        assert_eq!(
            all[0]["title"].as_str().unwrap().chars().count(),
            255,
            "a title is shortened to GitLab's 255 characters"
        );
        // ... one more is refused before anything is sent.
        let before = f.requests().len();
        let e = forge
            .upsert_issue(DRIFT, "drift", &"x".repeat(budget + 1))
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::TooLarge);
        assert!(e.to_string().contains("1048576"), "{e}");
        let e = forge
            .close_issue(DRIFT, &"x".repeat(budget + 1))
            .unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::TooLarge);
        assert_eq!(f.requests().len(), before);
        f.assert_no_violations();

        // CI_PROJECT_ID naming a project the token is no member of: 404, nothing opened.
        let mut env = gitlab_env(&f);
        env.insert("CI_PROJECT_ID".into(), "43".into());
        let other = context(&env).forge.with_retry(fast());
        let e = other.upsert_issue(DRIFT, "drift", "x").unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::NotFound);
        assert!(e.to_string().contains("CI_PROJECT_ID"), "{e}");
        assert_eq!(gitlab_issues(&f).len(), 1);
        // No token: the fix, and nothing sent.
        env.remove("AIRLOCK_GITLAB_TOKEN");
        let before = f.requests().len();
        let e = context(&env).forge.close_issue(DRIFT, "x").unwrap_err();
        assert_eq!(e.kind, ForgeErrorKind::Unauthorized);
        assert!(e.to_string().contains("AIRLOCK_GITLAB_TOKEN"), "{e}");
        assert_eq!(f.requests().len(), before);
    }

    #[test]
    fn gitlab_finds_its_issue_beyond_the_first_page() {
        let (f, forge) = gitlab_project_42();
        const DRIFT: &str = "<!-- airlock:drift:prod/db -->";
        // 105 other open issues of the integration's (other stacks'), older than ours.
        for i in 0..105 {
            forge
                .upsert_issue(&format!("<!-- airlock:drift:s{i} -->"), "drift", "x")
                .unwrap();
        }
        forge.upsert_issue(DRIFT, "drift", "1").unwrap();
        forge.upsert_issue(DRIFT, "drift", "2").unwrap();
        let ours: Vec<_> = gitlab_issues(&f)
            .into_iter()
            .filter(|i| i["description"].as_str().unwrap().starts_with(DRIFT))
            .collect();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0]["description"], format!("{DRIFT}\n2"));
        assert!(f.requests().iter().any(|r| r.query["page"] == "2"));
        f.assert_no_violations();
    }

    #[test]
    fn markers_must_be_hidden_html_comments() {
        for bad in [
            "airlock",
            "<!-- a --> visible",
            "<!---->",
            "<!-- a -- b -->",
            "<!-- a\nb -->",
        ] {
            assert!(check_marker(bad).is_err(), "{bad:?}");
        }
        check_marker(MARKER).unwrap();
    }
}
