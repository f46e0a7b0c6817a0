//! The run page and its actions: the decision and findings first, then the destructive changes
//! (critical first), approve/reject bound to the plan hash shown, metadata, approvals, the apply
//! log, and the full plan as a paged per-resource tree with attribute-level before/after.

use std::collections::HashMap;
use std::fmt::Write;

use airlock_core::attr_diff::{compare, flatten, mask_paths, AttrChange};
use airlock_core::Permission;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::html::{esc, long, seg};
use super::pages::{at, attr_table, text};
use super::{check_post, refused_post, Ctx, Fail, MAX_REASON};

/// Resources per page of the plan tree.
pub const PAGE_SIZE: usize = 100;
/// Most destructive changes shown with their attributes (all are listed).
const MAX_DESTRUCTIVE_DETAILED: usize = 200;
/// Most bytes of the apply log a page shows (its end).
const MAX_LOG_SHOWN: usize = 1024 * 1024;

#[derive(Deserialize)]
struct PlanDoc<'a> {
    #[serde(borrow, default)]
    resource_changes: Vec<ResourceChange<'a>>,
    #[serde(borrow, default)]
    resource_drift: Vec<ResourceChange<'a>>,
}

impl<'a> PlanDoc<'a> {
    /// The changes the run applies: for a run that accepts drift (refresh-only), its drift.
    fn changes(&self, accepts_drift: bool) -> &[ResourceChange<'a>] {
        match accepts_drift {
            true => &self.resource_drift,
            false => &self.resource_changes,
        }
    }
}

#[derive(Deserialize)]
struct ResourceChange<'a> {
    address: String,
    #[serde(default)]
    module_address: Option<String>,
    #[serde(rename = "type", default)]
    resource_type: String,
    #[serde(borrow)]
    change: Change<'a>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(default)]
    actions: Vec<String>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after_unknown: Option<&'a RawValue>,
    #[serde(borrow, default)]
    before_sensitive: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after_sensitive: Option<&'a RawValue>,
}

fn parse_raw(raw: Option<&RawValue>) -> Value {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null)
}

/// The attribute-level changes of one resource change, sensitive values masked.
fn attribute_changes(c: &Change<'_>) -> Vec<AttrChange> {
    let before = flatten(
        &parse_raw(c.before),
        &mask_paths(&parse_raw(c.before_sensitive)),
        &[],
    );
    let after = flatten(
        &parse_raw(c.after),
        &mask_paths(&parse_raw(c.after_sensitive)),
        &mask_paths(&parse_raw(c.after_unknown)),
    );
    compare(&before, &after)
}

fn change_details(rc: &ResourceChange<'_>, open: bool) -> String {
    let changes: Vec<Value> = attribute_changes(&rc.change)
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
        .collect();
    format!(
        "<details class=\"change\"{}><summary><span class=\"mono\">{}</span> — {}</summary>{}</details>",
        if open { " open" } else { "" },
        long(&rc.address),
        esc(&rc.change.actions.join(", ")),
        attr_table(&changes)
    )
}

#[derive(Deserialize, Default)]
pub struct RunQuery {
    page: Option<usize>,
    done: Option<String>,
}

/// The binary plan as stored, in words: kept, or purged (when, and what stays of it).
fn plan_file(f: &Value) -> String {
    match (f["purged_at"].is_i64(), f["bytes"].as_u64()) {
        (true, Some(bytes)) => format!(
            "purged at {} ({bytes} bytes): the run has ended, so the plan file, which could still be applied, is not kept; its hash above, this page's plan JSON (the planned values too, sensitive ones in clear for read-plan holders) and the logs are",
            at(&f["purged_at"])
        ),
        (false, Some(bytes)) => format!("kept ({bytes} bytes) until the run ends"),
        _ => "none stored".into(),
    }
}

/// `GET /ui/runs/{id}`.
pub async fn page(ctx: Ctx, Path(id): Path<String>, Query(q): Query<RunQuery>) -> Response {
    let flash = match q.done.as_deref() {
        Some("approved") => Some((StatusCode::OK, "Your approval was recorded.".to_owned())),
        Some("rejected") => Some((StatusCode::OK, "The run was rejected.".to_owned())),
        _ => None,
    };
    render(&ctx, &id, q.page.unwrap_or(1), flash).await
}

/// The run page, with a banner: a success note (2xx) or the API's refusal (its status).
async fn render(ctx: &Ctx, id: &str, page: usize, flash: Option<(StatusCode, String)>) -> Response {
    let base = format!("/api/v1/runs/{}", seg(id));
    let shown = match ctx.get(&base).await {
        Ok(v) => v,
        Err(f) => return ctx.fail(f),
    };
    let plan_json = match ctx
        .call(Method::GET, &format!("{base}/artifacts/plan.json"), None)
        .await
    {
        Ok(r) => r.body,
        Err(Fail::SignedOut) => return ctx.fail(Fail::SignedOut),
        Err(Fail::Refused(..)) => Default::default(),
    };
    let run = &shown["run"];
    let status = text(&run["status"]);
    let log = if matches!(status.as_str(), "applied" | "failed" | "applying") {
        match ctx.call(Method::GET, &format!("{base}/log"), None).await {
            Ok(r) => Some(r.body),
            Err(Fail::SignedOut) => return ctx.fail(Fail::SignedOut),
            Err(Fail::Refused(..)) => None,
        }
    } else {
        None
    };
    let plan: Option<PlanDoc<'_>> = serde_json::from_slice(&plan_json).ok();
    let report = &run["report"];
    let decision = text(&run["decision"]);
    let stack = text(&run["stack"]);
    let mut body = format!(
        "<h1>Run <span class=\"mono\">{}</span></h1><p>stack <a href=\"/ui/stacks/{}\">{}</a> · status <strong id=\"status\">{}</strong></p>",
        esc(id),
        seg(&stack),
        esc(&stack),
        esc(&status)
    );
    // Other stacks whose state the plan phase could read (terraform_remote_state): what the
    // reviewed values may come from besides this stack.
    let read: Vec<String> = run["plan_read_stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "<a href=\"/ui/stacks/{}\">{}</a>",
                seg(&text(s)),
                esc(&text(s))
            )
        })
        .collect();
    if !read.is_empty() {
        let _ = write!(
            body,
            "<p id=\"read-stacks\">its plan could read the state of {}</p>",
            read.join(", ")
        );
    }
    let accepts_drift = run["plan_mode"].as_str() == Some("refresh-only");
    if accepts_drift {
        let _ = write!(
            body,
            "<div class=\"banner warn\" id=\"accept-drift\"><strong>Accept drift:</strong> {}</div>",
            esc(crate::api::runs::ACCEPT_DRIFT.trim_start_matches("accept drift: "))
        );
    }
    if let Some((code, msg)) = &flash {
        let (class, el) = if code.is_success() {
            ("ok", "done")
        } else {
            ("error", "error")
        };
        let _ = write!(
            body,
            "<div class=\"banner {class}\" id=\"{el}\">{}{}</div>",
            esc(msg),
            if code.is_success() {
                String::new()
            } else {
                format!(" <span class=\"why\">(HTTP {})</span>", code.as_u16())
            }
        );
    }

    // 1. The decision and findings.
    let _ = write!(
        body,
        "<section id=\"decision\"><h2>Decision: <span class=\"decision-{d}\">{d}</span></h2><p>{}</p>",
        esc(&summary_line(report)),
        d = esc(&decision)
    );
    if let Some(changes) = run["policy_changes"].as_array().filter(|c| !c.is_empty()) {
        body.push_str("<div class=\"banner warn\"><strong>This change loosens the policy it is judged by:</strong><ul>");
        for c in changes {
            let _ = write!(body, "<li>{}</li>", long(&text(c)));
        }
        body.push_str("</ul></div>");
    }
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    if !findings.is_empty() {
        body.push_str("<table id=\"findings\"><tr><th>severity</th><th>rule</th><th>address</th><th>finding</th></tr>");
        for f in &findings {
            let sev = text(&f["severity"]);
            let _ = write!(
                body,
                "<tr><td class=\"sev-{}\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
                esc(&sev),
                esc(&sev),
                esc(&text(&f["rule"])),
                f["address"].as_str().map(long).unwrap_or_default(),
                long(&text(&f["message"]))
            );
        }
        body.push_str("</table>");
    }
    body.push_str("</section>");

    // 2. Destructive changes, critical first.
    let entries: HashMap<&str, &ResourceChange<'_>> = plan
        .iter()
        .flat_map(|p| p.changes(accepts_drift).iter())
        .map(|rc| (rc.address.as_str(), rc))
        .collect();
    let mut destructive: Vec<&Value> = report["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["destructive"].as_bool() == Some(true))
        .collect();
    destructive.sort_by_key(|c| {
        (
            c["critical"].as_bool() != Some(true),
            severity_rank(&c["severity"]),
        )
    });
    let destroys = run["destroys"].as_array().map_or(0, Vec::len);
    let _ = write!(
        body,
        "<section id=\"destructive\"><h2>{} ({})</h2>",
        if accepts_drift {
            "Dropped from the state (deleted outside Terraform)"
        } else {
            "Destructive changes"
        },
        destructive.len()
    );
    if destructive.is_empty() {
        body.push_str("<p>None: this plan deletes, replaces or forgets nothing.</p>");
    }
    for (i, c) in destructive.iter().enumerate() {
        let addr = text(&c["address"]);
        let reasons: Vec<String> = c["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| long(&text(r)))
            .collect();
        let _ = write!(
            body,
            "<div class=\"destructive-change\"><p><span class=\"destructive\">{}</span>{} <span class=\"mono\">{}</span> ({})</p>{}",
            esc(&c["actions"].as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()),
            if c["critical"].as_bool() == Some(true) { " <strong>CRITICAL</strong>" } else { "" },
            long(&addr),
            esc(&text(&c["type"])),
            if reasons.is_empty() { String::new() } else { format!("<ul><li>{}</li></ul>", reasons.join("</li><li>")) }
        );
        if i < MAX_DESTRUCTIVE_DETAILED {
            if let Some(rc) = entries.get(addr.as_str()) {
                body.push_str(&change_details(rc, false));
            }
        }
        body.push_str("</div>");
    }
    body.push_str("</section>");

    // 3. Approve / reject.
    body.push_str(&actions(ctx, id, &shown, &status, destroys));

    // 4. Metadata and approvals.
    let current = if shown["current"].as_bool() == Some(true) {
        "yes: the stack is still at the planned serial".to_owned()
    } else {
        format!(
            "no: the stack is now at serial {}; this plan can no longer be applied",
            text(&shown["stack_serial"])
        )
    };
    // Who the planner says wrote the change request: their users cannot approve the run.
    let writers: Vec<String> = run["change_authors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let writers = if writers.is_empty() {
        String::new()
    } else {
        format!(
            "<tr><th>change request</th><td id=\"change-authors\">#{}, written or pushed by {} (as the planner reported it; their users cannot approve)</td></tr>",
            esc(&text(&run["change_request"])),
            esc(&writers.join(", "))
        )
    };
    // An applying run waits for reports from its applier until its deadline.
    let alive = match (status.as_str(), run["apply_alive_until"].is_i64()) {
        ("applying", true) => format!(
            "<tr><th>applier reports until</th><td id=\"alive-until\">{} (the run is closed as abandoned if its applier stops reporting by then)</td></tr>",
            esc(&at(&run["apply_alive_until"]))
        ),
        _ => String::new(),
    };
    let _ = write!(
        body,
        "<section id=\"metadata\"><h2>Plan</h2><table class=\"meta\">\
<tr><th>author</th><td id=\"author\">{} ({})</td></tr>{writers}<tr><th>commit</th><td class=\"mono\">{} (as the planner reported it)</td></tr>\
<tr><th>base commit</th><td class=\"mono\">{}</td></tr><tr><th>inputs fingerprint</th><td class=\"mono\">{}</td></tr>\
<tr><th>Terraform</th><td>{}</td></tr><tr><th>planned serial</th><td>{}</td></tr><tr><th>still current</th><td id=\"current\">{}</td></tr>\
<tr><th>plan SHA-256</th><td class=\"mono\">{}</td></tr><tr><th>plan file</th><td id=\"plan-file\">{}</td></tr><tr><th>created</th><td>{}</td></tr><tr><th>expires</th><td>{}</td></tr>\
<tr><th>approvals</th><td>{} valid of {} required</td></tr>{alive}<tr><th>note</th><td>{}</td></tr></table>",
        esc(&text(&run["author"])),
        esc(&text(&run["author_role"])),
        esc(&text(&run["git_head"])),
        esc(&text(&run["git_base"])),
        esc(&text(&run["fingerprint"])),
        esc(&text(&run["terraform_version"])),
        esc(&text(&run["planned_serial"])),
        esc(&current),
        esc(&text(&run["plan_sha256"])),
        esc(&plan_file(&shown["plan_file"])),
        esc(&at(&run["created_at"])),
        esc(&at(&run["expires_at"])),
        shown["valid_approvers"].as_array().map_or(0, Vec::len),
        esc(&text(&run["required_approvals"])),
        long(&text(&run["note"])),
    );
    body.push_str("<h3>Approvals</h3><table id=\"approvals\"><tr><th>by</th><th>when</th><th>plan SHA-256</th></tr>");
    for a in run["approvals"].as_array().into_iter().flatten() {
        let same = a["plan_sha256"] == run["plan_sha256"];
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}{}</td></tr>",
            esc(&text(&a["by"])),
            esc(&at(&a["at"])),
            esc(&text(&a["plan_sha256"])),
            if same {
                ""
            } else {
                " (another plan: does not count)"
            }
        );
    }
    body.push_str("</table>");
    if let Some(r) = run["rejection"].as_object() {
        let _ = write!(
            body,
            "<p id=\"rejection\">Rejected by {} at {}: {}</p>",
            esc(&text(&r["by"])),
            esc(&at(&r["at"])),
            long(&text(&r["reason"]))
        );
    }
    if let Some(checks) = run["checks"].as_array().filter(|c| !c.is_empty()) {
        body.push_str("<h3>Checks made at apply</h3><ul>");
        for c in checks {
            let _ = write!(body, "<li>{}</li>", long(&text(c)));
        }
        body.push_str("</ul>");
    }
    body.push_str("</section>");

    // 5. The apply log.
    let log_text = log
        .as_deref()
        .map(|b| tail(b, MAX_LOG_SHOWN))
        .unwrap_or_else(|| match status.as_str() {
            "applying" => "(applying: waiting for the first lines of the log)".into(),
            _ => "(no apply yet)".into(),
        });
    let _ = write!(
        body,
        "<section id=\"live\" data-status=\"{}\" data-url=\"/ui/runs/{}/live\"><h2>Apply log · <span id=\"live-status\">{}</span></h2><pre id=\"live-log\">{}</pre></section>",
        esc(&status),
        seg(id),
        esc(&status),
        esc(&log_text)
    );

    // 6. The whole plan, paged.
    body.push_str(&plan_tree(plan.as_ref(), accepts_drift, id, page));
    ctx.page(
        flash.as_ref().map_or(StatusCode::OK, |(c, _)| *c),
        &format!("Run {id}"),
        &body,
    )
}

/// The end of `log`, as text.
fn tail(log: &[u8], max: usize) -> String {
    let start = log.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&log[start..]).into_owned();
    if start > 0 {
        format!("(… the first {start} bytes are not shown)\n{text}")
    } else {
        text
    }
}

fn severity_rank(v: &Value) -> u8 {
    match v.as_str() {
        Some("critical") => 0,
        Some("high") => 1,
        Some("medium") => 2,
        Some("low") => 3,
        _ => 4,
    }
}

fn summary_line(report: &Value) -> String {
    let s = &report["summary"];
    let Some(map) = s.as_object() else {
        return String::new();
    };
    map.iter()
        .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why this session's Approve button is disabled, if it is (presentation only: the API decides,
/// and a forced click gets the API's refusal).
fn approve_blocked(ctx: &Ctx, shown: &Value, status: &str) -> Option<String> {
    let who = ctx.who();
    if !who.role.has(Permission::Approve) {
        return Some(format!(
            "Your token's role ({}) can read runs but never approve them.",
            who.role
        ));
    }
    if shown["author_user"].as_str() == Some(who.user.as_str()) {
        return Some("You planned this run: another approver must approve it.".into());
    }
    if status != "needs_approval" {
        return Some(format!("The run is {status}: there is nothing to approve."));
    }
    let mine = shown["valid_approvers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|u| u.as_str() == Some(who.user.as_str()));
    if mine {
        return Some("You have approved this run already; another approver must.".into());
    }
    None
}

fn actions(ctx: &Ctx, id: &str, shown: &Value, status: &str, destroys: usize) -> String {
    let blocked = approve_blocked(ctx, shown, status);
    let run = &shown["run"];
    let mut out = format!(
        "<section id=\"review\"><h2>Review</h2><form method=\"post\" action=\"/ui/runs/{}/approve\" class=\"action\" id=\"approve-form\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"plan_sha256\" value=\"{}\">\
<p>Approving approves exactly the plan with SHA-256 <code id=\"plan-sha\">{}</code>.</p>",
        seg(id),
        esc(ctx.csrf()),
        esc(&text(&run["plan_sha256"])),
        esc(&text(&run["plan_sha256"])),
    );
    if destroys > 0 && blocked.is_none() {
        let _ = write!(
            out,
            "<label>This run destroys <strong>{destroys}</strong> instance(s). Type {destroys} to confirm: \
<input type=\"text\" name=\"confirm_destroy\" id=\"confirm-destroy\" data-destroys=\"{destroys}\" inputmode=\"numeric\" maxlength=\"20\" autocomplete=\"off\"></label>"
        );
    }
    match &blocked {
        Some(why) => {
            let _ = write!(
                out,
                "<button type=\"submit\" id=\"approve-button\" disabled data-refused=\"1\">Approve</button> <span class=\"why\" id=\"approve-why\">{}</span>",
                esc(why)
            );
        }
        None => out.push_str("<button type=\"submit\" id=\"approve-button\">Approve</button>"),
    }
    out.push_str("</form>");
    let open = matches!(status, "needs_approval" | "approved");
    if open && ctx.who().role.has(Permission::Approve) {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/ui/runs/{}/reject\" class=\"action\" id=\"reject-form\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><label>Reason <input type=\"text\" name=\"reason\" maxlength=\"{MAX_REASON}\" required></label>\
<button type=\"submit\" id=\"reject-button\">Reject</button></form>",
            seg(id),
            esc(ctx.csrf())
        );
    }
    out.push_str("</section>");
    out
}

/// The plan's resource changes (no-ops left out), grouped by module, [`PAGE_SIZE`] per page.
fn plan_tree(plan: Option<&PlanDoc<'_>>, accepts_drift: bool, id: &str, page: usize) -> String {
    let Some(plan) = plan else {
        return "<section id=\"plan\"><h2>Plan</h2><p>The plan JSON could not be read.</p></section>".into();
    };
    let changes: Vec<&ResourceChange<'_>> = plan
        .changes(accepts_drift)
        .iter()
        .filter(|rc| rc.change.actions.iter().any(|a| a != "no-op"))
        .collect();
    let pages = changes.len().div_ceil(PAGE_SIZE).max(1);
    let page = page.clamp(1, pages);
    let mut out = format!(
        "<section id=\"plan\"><h2>All changes ({})</h2><p class=\"pager\">page {page} of {pages}",
        changes.len()
    );
    for (label, p) in [("previous", page.saturating_sub(1)), ("next", page + 1)] {
        if (1..=pages).contains(&p) && p != page {
            let _ = write!(
                out,
                " <a href=\"/ui/runs/{}?page={p}#plan\" id=\"page-{label}\">{label}</a>",
                seg(id)
            );
        }
    }
    out.push_str("</p>");
    let mut module: Option<&str> = None;
    let open = changes.len() <= 20;
    for rc in changes.iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE) {
        let m = rc.module_address.as_deref().unwrap_or("");
        if module != Some(m) {
            let _ = write!(
                out,
                "<h3 class=\"module mono\">{}</h3>",
                if m.is_empty() {
                    "root module".to_owned()
                } else {
                    long(m)
                }
            );
            module = Some(m);
        }
        let _ = write!(
            out,
            "<div class=\"resource\" data-type=\"{}\">",
            esc(&rc.resource_type)
        );
        out.push_str(&change_details(rc, open));
        out.push_str("</div>");
    }
    out.push_str("</section>");
    out
}

/// `GET /ui/runs/{id}/live`: status and apply log as JSON, for the page's poller.
pub async fn live(ctx: Ctx, Path(id): Path<String>) -> Response {
    let base = format!("/api/v1/runs/{}", seg(&id));
    let shown = match ctx.get(&base).await {
        Ok(v) => v,
        Err(Fail::SignedOut) => return StatusCode::UNAUTHORIZED.into_response(),
        Err(Fail::Refused(s, m)) => return (s, axum::Json(json!({"error": m}))).into_response(),
    };
    let status = text(&shown["run"]["status"]);
    let log = match ctx.call(Method::GET, &format!("{base}/log"), None).await {
        Ok(r) => Value::String(tail(&r.body, MAX_LOG_SHOWN)),
        Err(_) => Value::Null,
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"status": status, "log": log})),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct ApproveForm {
    csrf: Option<String>,
    plan_sha256: String,
    confirm_destroy: Option<String>,
}

/// `POST /ui/runs/{id}/approve`: the API's approve, bound to the plan hash the page showed.
pub async fn approve(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ApproveForm>,
) -> Response {
    if let Err(why) = check_post(&ctx.state, &headers, ctx.csrf(), f.csrf.as_deref()) {
        return refused_post(StatusCode::FORBIDDEN, &why, Some(&ctx));
    }
    if f.plan_sha256.len() != 64 || !f.plan_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refused_post(
            StatusCode::BAD_REQUEST,
            "plan_sha256 must be the 64-character SHA-256 shown on the run page",
            Some(&ctx),
        );
    }
    let confirm = match f.confirm_destroy.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => match n.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let msg = "the number of instances to destroy must be typed as digits";
                return render(&ctx, &id, 1, Some((StatusCode::BAD_REQUEST, msg.into()))).await;
            }
        },
    };
    let body = json!({"plan_sha256": f.plan_sha256, "confirm_destroy": confirm});
    let uri = format!("/api/v1/runs/{}/approve", seg(&id));
    match ctx.call(Method::POST, &uri, Some(&body)).await {
        Ok(_) => Redirect::to(&format!("/ui/runs/{}?done=approved", seg(&id))).into_response(),
        Err(Fail::SignedOut) => ctx.fail(Fail::SignedOut),
        Err(Fail::Refused(status, msg)) => render(&ctx, &id, 1, Some((status, msg))).await,
    }
}

#[derive(Deserialize)]
pub struct RejectForm {
    csrf: Option<String>,
    reason: String,
}

/// `POST /ui/runs/{id}/reject`.
pub async fn reject(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<RejectForm>,
) -> Response {
    if let Err(why) = check_post(&ctx.state, &headers, ctx.csrf(), f.csrf.as_deref()) {
        return refused_post(StatusCode::FORBIDDEN, &why, Some(&ctx));
    }
    let uri = format!("/api/v1/runs/{}/reject", seg(&id));
    match ctx
        .call(Method::POST, &uri, Some(&json!({"reason": f.reason})))
        .await
    {
        Ok(_) => Redirect::to(&format!("/ui/runs/{}?done=rejected", seg(&id))).into_response(),
        Err(Fail::SignedOut) => ctx.fail(Fail::SignedOut),
        Err(Fail::Refused(status, msg)) => render(&ctx, &id, 1, Some((status, msg))).await,
    }
}
