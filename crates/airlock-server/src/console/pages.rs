//! Stacks, stack history, versions, version diffs, runs and audit pages, and the stack actions
//! (restore, force-unlock). Each reads the API as the signed-in token and renders what it got.

use std::collections::BTreeMap;
use std::fmt::Write;

use airlock_core::{Permission, StackName};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};

use super::html::{esc, long, seg, when};
use super::{check_post, refused_post, Ctx, Fail, MAX_REASON};

/// Most stacks whose lock and last version the stacks page reads.
const MAX_DETAILED_STACKS: usize = 200;

/// `?k=v&…` with every value percent-encoded; empty values left out.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push(if out.is_empty() { '?' } else { '&' });
            let _ = write!(out, "{k}={}", seg(v));
        }
    }
    out
}

/// A JSON scalar as text (`—` for null or missing).
/// A stack's drift status in words (the API's `drift` object; times in UTC).
fn drift_cell(d: &Value) -> String {
    let at = |k: &str| {
        d[k].as_i64()
            .map_or_else(|| "-".to_owned(), airlock_core::time::rfc3339)
    };
    match d["status"].as_str() {
        Some("in_sync") => format!("in sync (checked {})", at("last_check")),
        Some("drifted") => format!(
            "drifted since {}: {} changed, {} findings (checked {})",
            at("drifted_since"),
            text(&d["drifted"]),
            text(&d["findings"]),
            at("last_check")
        ),
        Some("unknown") => format!("unknown: the check at {} failed", at("last_check")),
        _ => "never checked".to_owned(),
    }
}

pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A millisecond timestamp as RFC 3339 (`—` when missing).
pub fn at(v: &Value) -> String {
    v.as_i64().map_or_else(|| "—".into(), when)
}

/// A run link.
pub fn run_link(id: &str) -> String {
    format!(
        "<a href=\"/ui/runs/{}\" class=\"mono\">{}</a>",
        seg(id),
        esc(id)
    )
}

/// The stack named by a path segment, or the page that says why not.
fn stack_of(raw: &str) -> Result<StackName, Fail> {
    StackName::parse(raw)
        .map_err(|e| Fail::Refused(StatusCode::BAD_REQUEST, format!("invalid stack name: {e}")))
}

fn stack_link(name: &str) -> String {
    format!("<a href=\"/ui/stacks/{}\">{}</a>", seg(name), esc(name))
}

/// The lock holder and, for those whose role may, the force-unlock form.
fn lock_cell(ctx: &Ctx, stack: &str, lock: &Value) -> String {
    if lock.is_null() {
        return "unlocked".into();
    }
    let mut out = format!(
        "locked by {} ({}) since {}",
        esc(&text(&lock["owner"])),
        esc(&text(&lock["operation"])),
        esc(&at(&lock["created_at"]))
    );
    if ctx.who().role.has(Permission::ForceUnlock) {
        // Bound to the lock shown: a lock taken since (CI's apply, say) is not released.
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/ui/stacks/{}/unlock\" class=\"inline\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"lock_id\" value=\"{}\">\
<button type=\"submit\" class=\"force-unlock\">Force-unlock</button></form>",
            seg(stack),
            esc(ctx.csrf()),
            esc(&text(&lock["id"]))
        );
    }
    out
}

/// `GET /ui/`: stacks with their lock, last version and runs waiting for approval.
pub async fn stacks(ctx: Ctx) -> Response {
    let list = match ctx.get("/api/v1/stacks").await {
        Ok(v) => v,
        Err(f) => return ctx.fail(f),
    };
    let waiting = match ctx
        .get("/api/v1/runs?status=needs_approval&limit=500")
        .await
    {
        Ok(v) => v,
        Err(f) => return ctx.fail(f),
    };
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    for r in waiting["runs"].as_array().into_iter().flatten() {
        *open.entry(text(&r["stack"])).or_default() += 1;
    }
    let stacks = list["stacks"].as_array().cloned().unwrap_or_default();
    let mut body = String::from(
        "<h1>Stacks</h1><table id=\"stacks\"><tr><th>stack</th><th>production</th><th>lock</th>\
<th>last version</th><th>runs waiting for approval</th></tr>",
    );
    for (i, s) in stacks.iter().enumerate() {
        let name = text(&s["name"]);
        let (lock, last) = if i < MAX_DETAILED_STACKS {
            let uri = format!("/api/v1/stacks/{}?instances=false", seg(&name));
            match ctx.get(&uri).await {
                Ok(d) => {
                    let c = &d["current"];
                    let last = if c.is_null() {
                        "no versions yet".into()
                    } else {
                        format!(
                            "serial {} · {} · {}{}",
                            esc(&text(&c["serial"])),
                            esc(&at(&c["created_at"])),
                            esc(&text(&c["author"])),
                            c["run_id"]
                                .as_str()
                                .map(|r| format!(" · {}", run_link(r)))
                                .unwrap_or_default()
                        )
                    };
                    (lock_cell(&ctx, &name, &d["lock"]), last)
                }
                Err(Fail::SignedOut) => return ctx.fail(Fail::SignedOut),
                Err(Fail::Refused(_, m)) => (esc(&m), String::new()),
            }
        } else {
            ("(open the stack)".into(), String::new())
        };
        let waiting = open.get(&name).copied().unwrap_or(0);
        let archived = if s["archived"].is_null() {
            ""
        } else {
            " <em>(deleted)</em>"
        };
        let _ = write!(
            body,
            "<tr><td>{}{archived}</td><td>{}</td><td>{lock}</td><td>{last}</td><td>{}</td></tr>",
            stack_link(&name),
            if s["production"].as_bool() == Some(true) {
                "production"
            } else {
                ""
            },
            if waiting == 0 {
                "0".to_owned()
            } else {
                format!(
                    "<a href=\"/ui/runs{}\">{waiting}</a>",
                    query(&[("stack", Some(&name)), ("status", Some("needs_approval"))])
                )
            }
        );
    }
    body.push_str("</table>");
    if stacks.is_empty() {
        body.push_str("<p>No stacks visible to this token.</p>");
    }
    ctx.page(StatusCode::OK, "Stacks", &body)
}

#[derive(Deserialize, Default)]
pub struct Done {
    done: Option<String>,
}

/// A fixed confirmation for `?done=…` (never echoes the parameter).
fn done_banner(d: &Done) -> &'static str {
    match d.done.as_deref() {
        Some("restored") => "<div class=\"banner ok\" id=\"done\">Restored: the old version was written as a new version.</div>",
        Some("unlocked") => "<div class=\"banner ok\" id=\"done\">The lock was released.</div>",
        Some("approved") => "<div class=\"banner ok\" id=\"done\">Your approval was recorded.</div>",
        Some("rejected") => "<div class=\"banner ok\" id=\"done\">The run was rejected.</div>",
        _ => "",
    }
}

/// `GET /ui/stacks/{stack}`: settings, lock, and the version history with a diff picker.
pub async fn stack(ctx: Ctx, Path(raw): Path<String>, Query(d): Query<Done>) -> Response {
    let name = match stack_of(&raw) {
        Ok(n) => n,
        Err(f) => return ctx.fail(f),
    };
    let base = format!("/api/v1/stacks/{}", seg(name.as_str()));
    let (show, history) = match (
        ctx.get(&base).await,
        ctx.get(&format!("{base}/versions")).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(f), _) | (_, Err(f)) => return ctx.fail(f),
    };
    let s = name.as_str();
    let st = &show["stack"];
    let mut body = format!(
        "<h1>Stack {}</h1>{}<table class=\"meta\"><tr><th>production</th><td>{}</td></tr>\
<tr><th>lock</th><td>{}</td></tr><tr><th>managed instances</th><td>{}</td></tr>\
<tr><th>required approvals</th><td>{}</td></tr><tr><th>protected instances</th><td>{}</td></tr>\
<tr><th>drift</th><td id=\"drift\">{}</td></tr></table>\
<p><a href=\"/ui/runs{}\">Runs of this stack</a></p>",
        esc(s),
        done_banner(&d),
        st["production"].as_bool() == Some(true),
        lock_cell(&ctx, s, &show["lock"]),
        esc(&text(&show["instances"])),
        esc(&text(&st["settings"]["required_approvals"])),
        show["protected"].as_array().map_or(0, Vec::len),
        esc(&drift_cell(&show["drift"])),
        query(&[("stack", Some(s))])
    );
    let versions = history["versions"].as_array().cloned().unwrap_or_default();
    let _ = write!(
        body,
        "<h2>History</h2><form method=\"get\" action=\"/ui/stacks/{}/diff\">\
<table id=\"history\"><tr><th>from</th><th>to</th><th>serial</th><th>author</th><th>run</th><th>time</th><th>size</th><th>note</th></tr>",
        seg(s)
    );
    let n = versions.len();
    for (i, v) in versions.iter().rev().enumerate() {
        let serial = text(&v["serial"]);
        let note = match (&v["restored_from"], &v["reason"]) {
            (Value::Number(from), r) => format!("restored from {from}: {}", long(&text(r))),
            (_, Value::String(r)) => long(r),
            _ => String::new(),
        };
        let _ = write!(
            body,
            "<tr><td><input type=\"radio\" name=\"from\" value=\"{s0}\"{c1}></td><td><input type=\"radio\" name=\"to\" value=\"{s0}\"{c2}></td>\
<td><a href=\"/ui/stacks/{st}/versions/{s0}\">{s0}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{note}</td></tr>",
            esc(&text(&v["author"])),
            v["run_id"].as_str().map(run_link).unwrap_or_default(),
            esc(&at(&v["created_at"])),
            esc(&text(&v["size"])),
            s0 = esc(&serial),
            st = seg(s),
            c1 = if i == 1 { " checked" } else { "" },
            c2 = if i == 0 { " checked" } else { "" },
        );
    }
    body.push_str("</table>");
    if n >= 2 {
        body.push_str(
            "<button type=\"submit\" id=\"compare\">Compare the selected versions</button>",
        );
    }
    body.push_str("</form>");
    ctx.page(StatusCode::OK, &format!("Stack {s}"), &body)
}

/// `GET /ui/stacks/{stack}/versions/{serial}`: instances and outputs, and the restore form.
pub async fn version(ctx: Ctx, Path((raw, serial)): Path<(String, String)>) -> Response {
    let name = match stack_of(&raw) {
        Ok(n) => n,
        Err(f) => return ctx.fail(f),
    };
    let s = name.as_str();
    let v = match ctx
        .get(&format!(
            "/api/v1/stacks/{}/versions/{}",
            seg(s),
            seg(&serial)
        ))
        .await
    {
        Ok(v) => v,
        Err(f) => return ctx.fail(f),
    };
    let meta = &v["version"];
    let num = text(&meta["serial"]);
    let mut body = format!(
        "<h1>{} · version {}</h1><table class=\"meta\"><tr><th>author</th><td>{}</td></tr>\
<tr><th>time</th><td>{}</td></tr><tr><th>run</th><td>{}</td></tr><tr><th>size</th><td>{} bytes</td></tr>\
<tr><th>SHA-256</th><td class=\"mono\">{}</td></tr><tr><th>Terraform</th><td>{}</td></tr></table>",
        stack_link(s),
        esc(&num),
        esc(&text(&meta["author"])),
        esc(&at(&meta["created_at"])),
        meta["run_id"].as_str().map(run_link).unwrap_or_default(),
        esc(&text(&meta["size"])),
        esc(&text(&meta["sha256"])),
        esc(&text(&v["terraform_version"])),
    );
    if let Some(prev) = meta["serial"].as_u64().and_then(|n| n.checked_sub(1)) {
        let _ = write!(
            body,
            "<p><a href=\"/ui/stacks/{}/diff{}\">Diff with the previous version</a></p>",
            seg(s),
            query(&[("from", Some(&prev.to_string())), ("to", Some(&num))])
        );
    }
    body.push_str("<h2>Instances</h2><table id=\"instances\"><tr><th>address</th><th>type</th><th>protected</th></tr>");
    for i in v["instances"].as_array().into_iter().flatten() {
        let _ = write!(
            body,
            "<tr><td class=\"mono\">{}{}</td><td>{}</td><td>{}</td></tr>",
            long(&text(&i["address"])),
            if i["deposed"].is_null() {
                ""
            } else {
                " (deposed)"
            },
            esc(&text(&i["type"])),
            i["protected"].as_str().map(esc).unwrap_or_default()
        );
    }
    body.push_str("</table><h2>Outputs</h2><ul>");
    for o in v["outputs"].as_array().into_iter().flatten() {
        let _ = write!(
            body,
            "<li class=\"mono\">{}{}</li>",
            esc(&text(&o["name"])),
            if o["sensitive"].as_bool() == Some(true) {
                " <span class=\"masked\">(sensitive)</span>"
            } else {
                ""
            }
        );
    }
    body.push_str("</ul>");
    if ctx.who().role.has(Permission::Restore) {
        let _ = write!(
            body,
            "<h2>Restore</h2><form method=\"post\" action=\"/ui/stacks/{}/restore\" class=\"action\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"serial\" value=\"{}\">\
<label>Reason <input type=\"text\" name=\"reason\" maxlength=\"{MAX_REASON}\" required></label>\
<button type=\"submit\" id=\"restore\">Restore version {} as a new version</button></form>",
            seg(s),
            esc(ctx.csrf()),
            esc(&num),
            esc(&num)
        );
    } else {
        body.push_str("<p class=\"why\">Restoring a version needs the restore permission (approvers and admins).</p>");
    }
    ctx.page(StatusCode::OK, &format!("{s} version {num}"), &body)
}

#[derive(Deserialize)]
pub struct DiffQuery {
    from: Option<String>,
    to: Option<String>,
}

/// A version reference from a query: a serial or `current`, bounded.
fn version_ref(v: Option<&str>) -> Option<&str> {
    v.filter(|v| *v == "current" || (v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit())))
        .filter(|v| !v.is_empty())
}

/// One side of an attribute change, as text.
pub fn leaf(v: &Value) -> String {
    match v["kind"].as_str() {
        Some("value") => long(v["json"].as_str().unwrap_or("")),
        Some("sensitive") => "<span class=\"masked\">(sensitive)</span>".into(),
        Some("unknown") => "<span class=\"masked\">(known after apply)</span>".into(),
        Some("absent") => "<span class=\"masked\">—</span>".into(),
        _ => "?".into(),
    }
}

/// A table of attribute changes (`{path, before, after}`).
pub fn attr_table(changes: &[Value]) -> String {
    if changes.is_empty() {
        return "<p class=\"why\">No attribute that can be shown differs (a sensitive value, private data or status may have).</p>".into();
    }
    let mut out = String::from(
        "<table class=\"attrs\"><tr><th>attribute</th><th>before</th><th>after</th></tr>",
    );
    for c in changes {
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}</td><td class=\"before mono\">{}</td><td class=\"after mono\">{}</td></tr>",
            long(&text(&c["path"])),
            leaf(&c["before"]),
            leaf(&c["after"])
        );
    }
    out.push_str("</table>");
    out
}

/// `GET /ui/stacks/{stack}/diff?from=A&to=B`: instances added, removed and changed, with their
/// attributes (sensitive values masked), and outputs.
pub async fn diff(ctx: Ctx, Path(raw): Path<String>, Query(q): Query<DiffQuery>) -> Response {
    let name = match stack_of(&raw) {
        Ok(n) => n,
        Err(f) => return ctx.fail(f),
    };
    let s = name.as_str();
    let (Some(from), Some(to)) = (version_ref(q.from.as_deref()), version_ref(q.to.as_deref()))
    else {
        return ctx.fail(Fail::Refused(
            StatusCode::BAD_REQUEST,
            "pick two versions: from and to are serial numbers or `current`".into(),
        ));
    };
    let uri = format!(
        "/api/v1/stacks/{}/diff{}",
        seg(s),
        query(&[
            ("from", Some(from)),
            ("to", Some(to)),
            ("detail", Some("attributes"))
        ])
    );
    let d = match ctx.get(&uri).await {
        Ok(v) => v,
        Err(f) => return ctx.fail(f),
    };
    let a = &d["attributes"];
    let count = |k: &str| a[k].as_array().map_or(0, Vec::len);
    let mut body = format!(
        "<h1>{} · version {} → {}</h1><p id=\"diff-summary\">{} added, {} removed, {} changed, {} output(s) changed</p>",
        stack_link(s),
        esc(&text(&d["from"])),
        esc(&text(&d["to"])),
        count("added"),
        count("removed"),
        count("changed"),
        count("outputs"),
    );
    for (key, title) in [
        ("removed", "Removed"),
        ("changed", "Changed"),
        ("added", "Added"),
    ] {
        let list = a[key].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            continue;
        }
        let _ = write!(body, "<h2>{title}</h2>");
        for i in &list {
            let attrs = i["attributes"].as_array().cloned().unwrap_or_default();
            let _ = write!(
                body,
                "<details class=\"change {key}\"{}><summary class=\"mono\">{}</summary>{}{}</details>",
                if list.len() <= 50 { " open" } else { "" },
                long(&text(&i["address"])),
                attr_table(&attrs),
                if i["truncated"].as_bool() == Some(true) {
                    "<p class=\"why\">(cut short: too large to show in full)</p>"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(outs) = a["outputs"].as_array().filter(|o| !o.is_empty()) {
        body.push_str("<h2>Outputs</h2>");
        body.push_str(&attr_table(outs));
    }
    if a["omitted"].as_u64().unwrap_or(0) > 0 {
        let _ = write!(
            body,
            "<p class=\"why\">{} instance(s) are named without their attributes (the page shows at most {}).</p>",
            a["omitted"],
            airlock_core::attr_diff::MAX_DETAILED_INSTANCES
        );
    }
    ctx.page(StatusCode::OK, &format!("{s} diff"), &body)
}

#[derive(Deserialize)]
pub struct RestoreForm {
    csrf: Option<String>,
    serial: String,
    reason: String,
}

/// `POST /ui/stacks/{stack}/restore`: through the API's restore (which decides who may).
pub async fn restore(
    ctx: Ctx,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Form(f): Form<RestoreForm>,
) -> Response {
    if let Err(why) = check_post(&ctx.state, &headers, ctx.csrf(), f.csrf.as_deref()) {
        return refused_post(StatusCode::FORBIDDEN, &why, Some(&ctx));
    }
    let name = match stack_of(&raw) {
        Ok(n) => n,
        Err(f) => return ctx.fail(f),
    };
    let Ok(serial) = f.serial.parse::<u64>() else {
        return refused_post(
            StatusCode::BAD_REQUEST,
            "serial must be a number",
            Some(&ctx),
        );
    };
    let uri = format!("/api/v1/stacks/{}/restore", seg(name.as_str()));
    let body = json!({"serial": serial, "reason": f.reason});
    match ctx.call(Method::POST, &uri, Some(&body)).await {
        Ok(_) => Redirect::to(&format!("/ui/stacks/{}?done=restored", seg(name.as_str())))
            .into_response(),
        Err(e) => ctx.fail(e),
    }
}

#[derive(Deserialize)]
pub struct UnlockForm {
    csrf: Option<String>,
    lock_id: Option<String>,
}

/// `POST /ui/stacks/{stack}/unlock`: Terraform's `force-unlock LOCK_ID`, through the state
/// backend (which decides who may): it releases the lock the page showed, and only that one.
pub async fn force_unlock(
    ctx: Ctx,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Form(f): Form<UnlockForm>,
) -> Response {
    if let Err(why) = check_post(&ctx.state, &headers, ctx.csrf(), f.csrf.as_deref()) {
        return refused_post(StatusCode::FORBIDDEN, &why, Some(&ctx));
    }
    let name = match stack_of(&raw) {
        Ok(n) => n,
        Err(f) => return ctx.fail(f),
    };
    let Some(id) = f.lock_id.filter(|id| !id.is_empty()) else {
        return refused_post(
            StatusCode::BAD_REQUEST,
            "the form names no lock ID: reload the stack's page and force-unlock the lock it shows",
            Some(&ctx),
        );
    };
    let unlock = Method::from_bytes(b"UNLOCK").unwrap_or(Method::DELETE);
    let uri = format!("/state/{}", name.as_str());
    match ctx.call(unlock, &uri, Some(&json!({ "ID": id }))).await {
        Ok(_) => Redirect::to(&format!("/ui/stacks/{}?done=unlocked", seg(name.as_str())))
            .into_response(),
        Err(Fail::Refused(StatusCode::LOCKED, held)) => {
            let held: Value = serde_json::from_str(&held).unwrap_or_default();
            let msg = format!(
                "not released: the page showed lock {id}, but the stack is now locked by {} ({}, lock {}). Reload the page and check before force-unlocking.",
                text(&held["Who"]),
                text(&held["Operation"]),
                text(&held["ID"])
            );
            ctx.fail(Fail::Refused(StatusCode::CONFLICT, msg))
        }
        Err(e) => ctx.fail(e),
    }
}

#[derive(Deserialize, Default)]
pub struct RunsQuery {
    stack: Option<String>,
    status: Option<String>,
    author: Option<String>,
    commit: Option<String>,
    change_request: Option<String>,
}

/// `GET /ui/runs?stack=&status=&author=&commit=&change_request=`: newest first.
pub async fn runs(ctx: Ctx, Query(q): Query<RunsQuery>) -> Response {
    let filters = [
        ("stack", q.stack.as_deref()),
        ("status", q.status.as_deref()),
        ("author", q.author.as_deref()),
        ("commit", q.commit.as_deref()),
        ("change_request", q.change_request.as_deref()),
    ];
    let mut api = filters.to_vec();
    api.push(("limit", Some("200")));
    let list = match ctx.get(&format!("/api/v1/runs{}", query(&api))).await {
        Ok(v) => v,
        Err(f) => return ctx.fail(f),
    };
    let mut body = String::from(
        "<h1>Runs</h1><form method=\"get\" action=\"/ui/runs\" class=\"action\" id=\"filters\">",
    );
    for (k, v) in filters {
        let _ = write!(
            body,
            "<label class=\"inline\">{k} <input type=\"text\" name=\"{k}\" value=\"{}\" maxlength=\"200\"></label> ",
            esc(v.unwrap_or(""))
        );
    }
    body.push_str("<button type=\"submit\">Filter</button></form><table id=\"runs\"><tr><th>run</th><th>stack</th><th>status</th><th>decision</th><th>author</th><th>commit</th><th>change request</th><th>destroys</th><th>approvals</th><th>created</th></tr>");
    for r in list["runs"].as_array().into_iter().flatten() {
        let decision = text(&r["decision"]);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"decision-{}\">{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td></tr>",
            run_link(&text(&r["id"])),
            stack_link(&text(&r["stack"])),
            esc(&text(&r["status"])),
            esc(&decision),
            esc(&decision),
            esc(&text(&r["author"])),
            esc(&r["git_head"].as_str().map(|c| c.chars().take(12).collect::<String>()).unwrap_or_default()),
            esc(&r["change_request"].as_u64().map(|n| format!("#{n}")).unwrap_or_default()),
            esc(&text(&r["destroys"])),
            esc(&text(&r["approvals"])),
            esc(&text(&r["required_approvals"])),
            esc(&at(&r["created_at"])),
        );
    }
    body.push_str("</table>");
    ctx.page(StatusCode::OK, "Runs", &body)
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    stack: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    actor: Option<String>,
    before: Option<String>,
}

/// `GET /ui/audit`: the event log with filters, and the chain verification.
pub async fn audit(ctx: Ctx, Query(q): Query<AuditQuery>) -> Response {
    let filters = [
        ("stack", q.stack.as_deref()),
        ("action", q.action.as_deref()),
        ("outcome", q.outcome.as_deref()),
        ("actor", q.actor.as_deref()),
    ];
    let mut api = filters.to_vec();
    api.push(("before", q.before.as_deref()));
    api.push(("limit", Some("200")));
    let (events, verify) = match (
        ctx.get(&format!("/api/v1/audit{}", query(&api))).await,
        ctx.get("/api/v1/audit/verify").await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(f), _) | (_, Err(f)) => return ctx.fail(f),
    };
    let chain = if verify["ok"].as_bool() == Some(true) {
        format!(
            "<div class=\"banner ok\" id=\"chain\">Audit chain verified: {} record(s), head <span class=\"mono\">{}</span>.</div>",
            esc(&text(&verify["checked"])),
            esc(&text(&verify["head"]))
        )
    } else {
        format!(
            "<div class=\"banner error\" id=\"chain\">Audit chain BROKEN at record {}: {}</div>",
            esc(&text(&verify["first_broken"])),
            esc(&text(&verify["reason"]))
        )
    };
    let mut body = format!("<h1>Audit</h1>{chain}<form method=\"get\" action=\"/ui/audit\" class=\"action\" id=\"filters\">");
    for (k, v) in filters {
        let _ = write!(
            body,
            "<label class=\"inline\">{k} <input type=\"text\" name=\"{k}\" value=\"{}\" maxlength=\"200\"></label> ",
            esc(v.unwrap_or(""))
        );
    }
    body.push_str("<button type=\"submit\">Filter</button></form><table id=\"events\"><tr><th>#</th><th>time</th><th>actor</th><th>action</th><th>stack</th><th>outcome</th><th>detail</th></tr>");
    for e in events["events"].as_array().into_iter().flatten() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            esc(&text(&e["seq"])),
            esc(&text(&e["at"])),
            esc(&text(&e["actor"])),
            esc(&text(&e["action"])),
            esc(&text(&e["stack"])),
            esc(&text(&e["outcome"])),
            long(&e["detail"].to_string()),
        );
    }
    body.push_str("</table>");
    if let Some(next) = events["next_before"].as_i64() {
        let mut pairs = filters.to_vec();
        let n = next.to_string();
        pairs.push(("before", Some(&n)));
        let _ = write!(
            body,
            "<p class=\"pager\"><a href=\"/ui/audit{}\">Older events</a></p>",
            query(&pairs)
        );
    }
    ctx.page(StatusCode::OK, "Audit", &body)
}
