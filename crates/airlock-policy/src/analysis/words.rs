//! Text helpers: verbs and action reasons in words, replace paths, and untrusted text kept on
//! one line.

use serde_json::Value;

use crate::plan::ChangeKind;

pub(super) fn verb(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Delete => "deletes",
        ChangeKind::ReplaceDestroyFirst => "replaces (destroys, then creates)",
        ChangeKind::ReplaceCreateFirst => "replaces (creates, then destroys)",
        ChangeKind::ForgetReplace => "forgets and recreates",
        _ => "changes",
    }
}

pub(super) fn reason_in_words(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "replace_because_tainted" => "replaced because the object is tainted",
        "replace_because_cannot_update" => {
            "replaced because an attribute cannot be updated in place"
        }
        "replace_by_request" => "replaced by request (-replace)",
        "replace_by_triggers" => "replaced by replace_triggered_by",
        "delete_because_no_resource_config" => "its resource block was removed",
        "delete_because_wrong_repetition" => "count/for_each was added or removed",
        "delete_because_count_index" => "its count index is out of range",
        "delete_because_each_key" => "its for_each key was removed",
        "delete_because_no_module" => "its module call was removed",
        "delete_because_no_move_target" => "the target of a moved block does not exist",
        "delete_because_enabled_false" => "its `enabled` meta-argument is false",
        "forgot_because_lifecycle_destroy_in_state"
        | "forgot_because_lifecycle_destroy_in_config" => {
            "lifecycle destroy = false: forgotten, not destroyed"
        }
        "read_because_config_unknown" => "read during apply: its configuration is not known yet",
        "read_because_dependency_pending" => "read during apply: a dependency has pending changes",
        "read_because_check_nested" => "read during apply: nested in a check block",
        _ => return None,
    })
}

/// Renders a replace path such as `["settings", 0, "tier"]` as `settings[0].tier`.
pub(super) fn render_path(steps: &[Value]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Value::String(s) if out.is_empty() => out.push_str(&one_line(s)),
            Value::String(s) => {
                out.push('.');
                out.push_str(&one_line(s));
            }
            Value::Number(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
            _ => out.push_str("[?]"),
        }
    }
    out
}

/// Keeps untrusted text on one line and short (addresses and reasons come from input).
pub fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}
