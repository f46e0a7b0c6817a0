// The forge stand-in: a local GitHub and GitLab that the tests use instead of the real forges.
//
// Every request is checked before it is served. GitHub requests (under /github) are checked against
// GitHub's official OpenAPI description from the npm package @octokit/openapi, read from
// $AIRLOCK_TEST_NODE_MODULES (never hand-copied); GitLab requests (under /gitlab/api/v4) against the
// table GITLAB_ENDPOINTS below, one row per documented endpoint, citing its docs.gitlab.com page
// (GitLab publishes no OpenAPI description for these endpoints in a package we can install).
// A request that fails a check is refused as the forge would (404 unknown operation, 401 bad token,
// 403 no User-Agent, 422/400 invalid input) and recorded with its violations.
//
// It keeps the state the workflow uses (issue/MR comments, commit statuses, pull requests by merge
// commit, drift issues) with the forges' limits, and has control endpoints for tests under /__standin/.
//
// Usage: node standin.mjs --token TOKEN [--port 0]. Prints `listening http://127.0.0.1:PORT`.
// TOKEN is the CI's identity (GitHub: `github-actions[bot]`; GitLab: a project bot user).
// Control endpoints (outside both prefixes, no auth):
//   GET  /__standin/requests  every request: method, path, query, body, operation, status, violations
//   GET  /__standin/state     comments, notes, statuses, issues, registered pull/merge requests
//   POST /__standin/fail      {method, path: regex over the full path, status, count, headers, body,
//                             raw, apply}: the next `count` matching requests are answered `status`
//                             (with `body` as JSON, or the text `raw` verbatim)
//                             instead of served, or after taking effect when `apply` is true
//   POST /__standin/users     {token, login, type?}: another identity (a person by default)
//   POST /__standin/changes   {forge, project, number, head_sha, merge_commit_sha, state}
//   POST /__standin/gitlab_projects {token, projects}: the only GitLab projects that token sees

import http from "node:http";
import fs from "node:fs";
import path from "node:path";

// ---------------------------------------------------------------------------------------------
// Arguments and the API description
// ---------------------------------------------------------------------------------------------

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const TOKEN = arg("token");
const PORT = Number(arg("port", "0"));
if (!TOKEN) {
  console.error("standin: --token TOKEN is required");
  process.exit(2);
}
const MODULES = process.env.AIRLOCK_TEST_NODE_MODULES;
if (!MODULES) {
  console.error(
    "standin: AIRLOCK_TEST_NODE_MODULES is not set; source scripts/test-deps.sh (it installs @octokit/openapi)",
  );
  process.exit(2);
}
const SPEC_PATH = path.join(MODULES, "@octokit/openapi/generated/api.github.com.json");
const SPEC = JSON.parse(fs.readFileSync(SPEC_PATH, "utf8"));

// GitHub's documented limits the API description does not carry.
const GITHUB_COMMENT_MAX = 65536; // "body is too long (maximum is 65536 characters)"
const GITHUB_STATUS_DESCRIPTION_MAX = 140; // "description is too long (maximum is 140 characters)"
const GITHUB_STATUSES_PER_CONTEXT = 1000; // the API description's note on create-commit-status
const GITLAB_NOTE_MAX = 1000000; // "Note is too long (maximum is 1000000 characters)"
const GITLAB_DESCRIPTION_MAX = 1048576; // issues API: "description ... Limited to 1,048,576 characters"
const GITLAB_ISSUE_TITLE_MAX = 255; // "Title is too long (maximum is 255 characters)"
const MAX_BODY_BYTES = 8 * 1024 * 1024;

function resolve(node) {
  // Follows local `$ref`s (`#/components/...`) until a non-reference node.
  let seen = 0;
  while (node && typeof node === "object" && typeof node.$ref === "string") {
    if (++seen > 32) throw new Error(`reference loop at ${node.$ref}`);
    const parts = node.$ref.replace(/^#\//, "").split("/");
    node = parts.reduce((n, p) => (n == null ? n : n[p.replace(/~1/g, "/").replace(/~0/g, "~")]), SPEC);
  }
  return node;
}

const METHODS = ["get", "put", "post", "patch", "delete", "head", "options"];

// Every operation of the description, as a matcher: the template split into segments, its path and
// query parameters (references resolved), and its request body schema.
const GITHUB_OPERATIONS = [];
for (const [template, item] of Object.entries(SPEC.paths)) {
  const shared = (item.parameters || []).map(resolve);
  for (const method of METHODS) {
    const op = item[method];
    if (!op) continue;
    const params = [...shared, ...(op.parameters || []).map(resolve)];
    const segments = template.split("/").slice(1);
    GITHUB_OPERATIONS.push({
      method: method.toUpperCase(),
      template,
      operationId: op.operationId,
      segments,
      literals: segments.filter((s) => !s.startsWith("{")).length,
      pathParams: Object.fromEntries(params.filter((p) => p.in === "path").map((p) => [p.name, p])),
      queryParams: Object.fromEntries(params.filter((p) => p.in === "query").map((p) => [p.name, p])),
      body: op.requestBody ? resolve(op.requestBody) : null,
      responses: op.responses || {},
    });
  }
}
const GITHUB_BY_ID = new Map(GITHUB_OPERATIONS.map((o) => [o.operationId, o]));

// The description's own example answer of `operationId` for `status` (an array's first item), so
// the stand-in answers with every field GitHub sends; its state is laid over it (`overlay`).
function exampleAnswer(operationId, status) {
  const op = GITHUB_BY_ID.get(operationId);
  const r = op && resolve(op.responses[status]);
  const media = r && r.content && r.content["application/json"];
  const ex = media && media.examples && resolve(media.examples.default);
  const v = ex && ex.value;
  if (v === undefined) return {};
  return structuredClone(Array.isArray(v) ? (v[0] ?? {}) : v);
}

function overlay(base, ours) {
  if (typeOf(base) !== "object" || typeOf(ours) !== "object") return ours;
  const out = { ...base };
  for (const [k, v] of Object.entries(ours)) out[k] = overlay(base[k], v);
  return out;
}

// The stand-in's own answer against the description's response schema: a mismatch is a bug in
// the stand-in (a client tested against it would parse something GitHub never sends).
function checkAnswer(op, status, body) {
  const r = resolve(op.responses[status]);
  const schema = r && r.content && r.content["application/json"] && r.content["application/json"].schema;
  const out = [];
  if (schema && body !== undefined) checkSchema(schema, body, "answer", out);
  return out;
}

// The most specific template wins (`/issues/comments` before `/issues/{issue_number}`), as GitHub routes.
GITHUB_OPERATIONS.sort((a, b) => b.literals - a.literals || a.segments.length - b.segments.length);

// Matches `segments` (already split, still percent-encoded) against a template; returns the
// decoded path parameters or null. A `x-multi-segment` parameter may span several segments, but
// only as the template's last segment (every such template in the description ends with it).
function matchTemplate(op, segments) {
  const params = {};
  for (let i = 0; i < op.segments.length; i++) {
    const t = op.segments[i];
    if (i >= segments.length) return null;
    if (t.startsWith("{")) {
      const name = t.slice(1, -1);
      const multi = op.pathParams[name] && op.pathParams[name]["x-multi-segment"];
      if (multi && i === op.segments.length - 1) {
        params[name] = safeDecode(segments.slice(i).join("/"));
        return params[name] === null ? null : params;
      }
      const v = safeDecode(segments[i]);
      if (v === null || v === "") return null;
      params[name] = v;
    } else if (t !== segments[i]) {
      return null;
    }
  }
  return segments.length === op.segments.length ? params : null;
}

function safeDecode(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// A small JSON Schema checker for the subset the description uses (OpenAPI 3.0: `nullable`)
// ---------------------------------------------------------------------------------------------

function typeOf(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;
}

// `strict` (request bodies): a property the schema does not list is a violation even where the
// description leaves `additionalProperties` open, since GitHub silently drops it (a misspelt
// `contxt` would post a status under the context "default").
function checkSchema(schemaRef, value, where, out, strict = false) {
  const schema = resolve(schemaRef);
  if (!schema || typeof schema !== "object") return;
  if (value === null) {
    if (schema.nullable || schema.type === undefined) return;
    out.push(`${where}: null is not allowed`);
    return;
  }
  if (schema.allOf) for (const s of schema.allOf) checkSchema(s, value, where, out, strict);
  for (const key of ["oneOf", "anyOf"]) {
    if (!schema[key]) continue;
    const fits = schema[key].filter((s) => {
      const sub = [];
      checkSchema(s, value, where, sub, strict);
      return sub.length === 0;
    }).length;
    if (key === "anyOf" ? fits === 0 : fits !== 1)
      out.push(`${where}: matches ${fits} of the ${key} alternatives`);
  }
  if (schema.type) {
    const actual = typeOf(value);
    const ok = schema.type === actual || (schema.type === "number" && actual === "integer");
    if (!ok) {
      out.push(`${where}: expected ${schema.type}, got ${actual}`);
      return;
    }
  }
  if (schema.enum && !schema.enum.some((e) => e === value))
    out.push(`${where}: ${JSON.stringify(value)} is not one of ${JSON.stringify(schema.enum)}`);
  if (typeof value === "string") {
    if (schema.maxLength !== undefined && [...value].length > schema.maxLength)
      out.push(`${where}: longer than ${schema.maxLength} characters`);
    if (schema.minLength !== undefined && [...value].length < schema.minLength)
      out.push(`${where}: shorter than ${schema.minLength} characters`);
    if (schema.pattern && !new RegExp(schema.pattern, "u").test(value))
      out.push(`${where}: does not match ${schema.pattern}`);
  }
  if (typeof value === "number") {
    if (schema.maximum !== undefined && value > schema.maximum) out.push(`${where}: above ${schema.maximum}`);
    if (schema.minimum !== undefined && value < schema.minimum) out.push(`${where}: below ${schema.minimum}`);
  }
  if (Array.isArray(value)) {
    if (schema.maxItems !== undefined && value.length > schema.maxItems) out.push(`${where}: more than ${schema.maxItems} items`);
    if (schema.minItems !== undefined && value.length < schema.minItems) out.push(`${where}: fewer than ${schema.minItems} items`);
    if (schema.items) value.forEach((v, i) => checkSchema(schema.items, v, `${where}[${i}]`, out, strict));
  }
  if (typeOf(value) === "object") {
    const props = schema.properties || {};
    for (const r of schema.required || [])
      if (!(r in value)) out.push(`${where}: required property "${r}" is missing`);
    for (const [k, v] of Object.entries(value)) {
      if (k in props) checkSchema(props[k], v, `${where}.${k}`, out, strict);
      else if (schema.additionalProperties === false) out.push(`${where}: property "${k}" is not allowed`);
      else if (schema.additionalProperties && typeof schema.additionalProperties === "object")
        checkSchema(schema.additionalProperties, v, `${where}.${k}`, out, strict);
      else if (strict && schema.properties && !schema.allOf && !schema.oneOf && !schema.anyOf)
        out.push(`${where}: property "${k}" is not in the description (GitHub would ignore it silently)`);
    }
  }
}

// A path or query value (a string on the wire) against a parameter schema.
function checkScalar(schemaRef, raw, where, out) {
  const schema = resolve(schemaRef) || {};
  let value = raw;
  if (schema.type === "integer") {
    if (!/^-?\d+$/.test(raw)) return out.push(`${where}: ${JSON.stringify(raw)} is not an integer`);
    value = Number(raw);
  } else if (schema.type === "number") {
    if (raw.trim() === "" || !Number.isFinite(Number(raw))) return out.push(`${where}: ${JSON.stringify(raw)} is not a number`);
    value = Number(raw);
  } else if (schema.type === "boolean") {
    if (raw !== "true" && raw !== "false") return out.push(`${where}: ${JSON.stringify(raw)} is not true or false`);
    value = raw === "true";
  } else if (schema.type === "array") {
    return; // the description's array query parameters are comma-separated strings; none is used here
  }
  if (schema.format === "date-time" && Number.isNaN(Date.parse(raw)))
    out.push(`${where}: ${JSON.stringify(raw)} is not an ISO 8601 date-time`);
  checkSchema({ ...schema, format: undefined }, value, where, out);
}

// ---------------------------------------------------------------------------------------------
// GitLab: the documented endpoints the workflow uses, as a table
// ---------------------------------------------------------------------------------------------
// Each parameter: type (string | integer | boolean | number), required, enum. `:id` is a project
// ID or URL-encoded path; parameters may come in the query or a JSON body (GitLab accepts both).

const PAGINATION = {
  page: { type: "integer", min: 1 },
  per_page: { type: "integer", min: 1, max: 100 },
};
const PROJECT_ID = { type: "project" };

const GITLAB_ENDPOINTS = [
  {
    // https://docs.gitlab.com/api/users/#get-the-current-user
    method: "GET", path: "/user", op: "user", params: {},
  },
  {
    // https://docs.gitlab.com/api/notes/#list-all-merge-request-notes
    method: "GET", path: "/projects/:id/merge_requests/:merge_request_iid/notes", op: "list_notes",
    path_params: { id: PROJECT_ID, merge_request_iid: { type: "integer" } },
    params: {
      sort: { type: "string", enum: ["asc", "desc"] },
      order_by: { type: "string", enum: ["created_at", "updated_at"] },
      ...PAGINATION,
    },
  },
  {
    // https://docs.gitlab.com/api/notes/#get-single-merge-request-note
    method: "GET", path: "/projects/:id/merge_requests/:merge_request_iid/notes/:note_id", op: "get_note",
    path_params: { id: PROJECT_ID, merge_request_iid: { type: "integer" }, note_id: { type: "integer" } },
    params: {},
  },
  {
    // https://docs.gitlab.com/api/notes/#create-new-merge-request-note
    method: "POST", path: "/projects/:id/merge_requests/:merge_request_iid/notes", op: "create_note",
    path_params: { id: PROJECT_ID, merge_request_iid: { type: "integer" } },
    params: {
      body: { type: "string", required: true },
      created_at: { type: "string" },
      internal: { type: "boolean" },
      merge_request_diff_head_sha: { type: "string" },
    },
  },
  {
    // https://docs.gitlab.com/api/notes/#modify-existing-merge-request-note
    method: "PUT", path: "/projects/:id/merge_requests/:merge_request_iid/notes/:note_id", op: "update_note",
    path_params: { id: PROJECT_ID, merge_request_iid: { type: "integer" }, note_id: { type: "integer" } },
    params: { body: { type: "string", required: true } },
  },
  {
    // https://docs.gitlab.com/api/notes/#delete-a-merge-request-note
    method: "DELETE", path: "/projects/:id/merge_requests/:merge_request_iid/notes/:note_id", op: "delete_note",
    path_params: { id: PROJECT_ID, merge_request_iid: { type: "integer" }, note_id: { type: "integer" } },
    params: {},
  },
  {
    // https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit
    method: "POST", path: "/projects/:id/statuses/:sha", op: "create_status",
    path_params: { id: PROJECT_ID, sha: { type: "string" } },
    params: {
      state: { type: "string", required: true, enum: ["pending", "running", "success", "failed", "canceled", "skipped"] },
      ref: { type: "string" },
      name: { type: "string" },
      context: { type: "string" },
      target_url: { type: "string" },
      description: { type: "string" },
      coverage: { type: "number" },
      pipeline_id: { type: "integer" },
    },
  },
  {
    // https://docs.gitlab.com/api/commits/#list-the-statuses-of-a-commit
    method: "GET", path: "/projects/:id/repository/commits/:sha/statuses", op: "list_statuses",
    path_params: { id: PROJECT_ID, sha: { type: "string" } },
    params: {
      ref: { type: "string" },
      stage: { type: "string" },
      name: { type: "string" },
      pipeline_id: { type: "integer" },
      order_by: { type: "string", enum: ["id", "pipeline_id"] },
      sort: { type: "string", enum: ["asc", "desc"] },
      all: { type: "boolean" },
      ...PAGINATION,
    },
  },
  {
    // https://docs.gitlab.com/api/commits/#list-merge-requests-associated-with-a-commit
    method: "GET", path: "/projects/:id/repository/commits/:sha/merge_requests", op: "commit_mrs",
    path_params: { id: PROJECT_ID, sha: { type: "string" } },
    params: { state: { type: "string", enum: ["opened", "closed", "locked", "merged"] }, ...PAGINATION },
  },
  // Issues (`airlock ci drift`: one per drifted stack). A documented filter the stand-in does
  // not implement is `unserved`: answered 501, so no test passes on a filter silently ignored.
  {
    // https://docs.gitlab.com/api/issues/#list-all-project-issues
    method: "GET", path: "/projects/:id/issues", op: "list_issues",
    path_params: { id: PROJECT_ID },
    exclusive: [["author_id", "author_username"], ["assignee_id", "assignee_username"]],
    params: {
      author_id: { type: "integer" },
      author_username: { type: "string" },
      state: { type: "string", enum: ["opened", "closed", "all"] },
      search: { type: "string" },
      in: { type: "string", enum: ["title", "description", "title,description", "description,title"] },
      order_by: { type: "string", enum: ["created_at", "updated_at", "priority", "due_date", "relative_position", "label_priority", "milestone_due", "popularity", "weight"] },
      sort: { type: "string", enum: ["asc", "desc"] },
      scope: { type: "string", enum: ["created_by_me", "assigned_to_me", "all"] },
      assignee_id: { type: "integer", unserved: true },
      assignee_username: { type: "string", unserved: true },
      confidential: { type: "boolean", unserved: true },
      created_after: { type: "string", unserved: true },
      created_before: { type: "string", unserved: true },
      due_date: { type: "string", unserved: true },
      issue_type: { type: "string", enum: ["issue", "incident", "test_case", "task"], unserved: true },
      labels: { type: "string", unserved: true },
      milestone: { type: "string", unserved: true },
      my_reaction_emoji: { type: "string", unserved: true },
      updated_after: { type: "string", unserved: true },
      updated_before: { type: "string", unserved: true },
      with_labels_details: { type: "boolean", unserved: true },
      cursor: { type: "string", unserved: true },
      ...PAGINATION,
    },
  },
  {
    // https://docs.gitlab.com/api/issues/#retrieve-a-project-issue
    method: "GET", path: "/projects/:id/issues/:issue_iid", op: "get_issue",
    path_params: { id: PROJECT_ID, issue_iid: { type: "integer" } },
    params: {},
  },
  {
    // https://docs.gitlab.com/api/issues/#create-an-issue
    method: "POST", path: "/projects/:id/issues", op: "create_issue",
    path_params: { id: PROJECT_ID },
    params: {
      title: { type: "string", required: true },
      description: { type: "string" },
      confidential: { type: "boolean" },
      issue_type: { type: "string", enum: ["issue", "incident", "test_case", "task"] },
      labels: { type: "string", unserved: true },
      assignee_id: { type: "integer", unserved: true },
      milestone_id: { type: "integer", unserved: true },
      due_date: { type: "string", unserved: true },
      created_at: { type: "string", unserved: true },
    },
  },
  {
    // https://docs.gitlab.com/api/issues/#update-an-issue ("At least one of the following
    // parameters is required for the request to be successful")
    method: "PUT", path: "/projects/:id/issues/:issue_iid", op: "update_issue",
    path_params: { id: PROJECT_ID, issue_iid: { type: "integer" } },
    at_least_one: ["assignee_id", "assignee_ids", "confidential", "created_at", "description", "discussion_locked",
      "due_date", "issue_type", "labels", "milestone_id", "state_event", "title"],
    params: {
      title: { type: "string" },
      description: { type: "string" },
      state_event: { type: "string", enum: ["close", "reopen"] },
      confidential: { type: "boolean" },
      discussion_locked: { type: "boolean" },
      issue_type: { type: "string", enum: ["issue", "incident", "test_case", "task"] },
      add_labels: { type: "string", unserved: true },
      remove_labels: { type: "string", unserved: true },
      labels: { type: "string", unserved: true },
      assignee_id: { type: "integer", unserved: true },
      assignee_ids: { type: "integer", unserved: true },
      milestone_id: { type: "integer", unserved: true },
      due_date: { type: "string", unserved: true },
      created_at: { type: "string", unserved: true },
      updated_at: { type: "string", unserved: true },
    },
  },
];

function gitlabMatch(method, segments) {
  for (const ep of GITLAB_ENDPOINTS) {
    const t = ep.path.split("/").slice(1);
    if (t.length !== segments.length) continue;
    const params = {};
    let ok = true;
    for (let i = 0; i < t.length && ok; i++) {
      if (t[i].startsWith(":")) {
        const v = safeDecode(segments[i]);
        if (v === null || v === "") ok = false;
        else params[t[i].slice(1)] = v;
      } else ok = t[i] === segments[i];
    }
    if (ok && ep.method === method) return { ep, params };
  }
  return null;
}

function checkGitlabValue(spec, value, where, out) {
  // Query values are strings; JSON values are typed. Both are accepted as GitLab (Grape) coerces.
  const t = spec.type;
  if (t === "project") {
    if (!/^\d+$/.test(value) && !/^[\w.-]+(\/[\w.-]+)+$/.test(value))
      out.push(`${where}: ${JSON.stringify(value)} is neither a project ID nor a URL-encoded path`);
    return;
  }
  let v = value;
  if (t === "integer") {
    if (typeof v === "string" && /^-?\d+$/.test(v)) v = Number(v);
    if (!Number.isInteger(v)) return out.push(`${where}: ${JSON.stringify(value)} is not an integer`);
    if (spec.min !== undefined && v < spec.min) out.push(`${where}: below ${spec.min}`);
    if (spec.max !== undefined && v > spec.max) out.push(`${where}: above ${spec.max}`);
  } else if (t === "number") {
    if (typeof v === "string" && v.trim() !== "") v = Number(v);
    if (typeof v !== "number" || !Number.isFinite(v)) out.push(`${where}: ${JSON.stringify(value)} is not a number`);
  } else if (t === "boolean") {
    if (!(v === true || v === false || v === "true" || v === "false"))
      out.push(`${where}: ${JSON.stringify(value)} is not a boolean`);
  } else if (t === "string") {
    if (typeof v !== "string") return out.push(`${where}: expected a string, got ${typeOf(v)}`);
    if (spec.enum && !spec.enum.includes(v)) out.push(`${where}: ${JSON.stringify(v)} is not one of ${JSON.stringify(spec.enum)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// State and control
// ---------------------------------------------------------------------------------------------

const state = {
  users: new Map([[TOKEN, { id: 41898282, login: "github-actions[bot]", type: "Bot", gitlab_username: "project_1_bot" }]]),
  github: { comments: [], statuses: [], pulls: [], issues: [], nextId: 1000, nextIssue: 500 },
  gitlab: { notes: [], statuses: [], mrs: [], issues: [], nextId: 5000, nextIid: {} },
};
const requests = [];
let failures = []; // { method, pathRegex, status, remaining, headers, body, apply }

function now() {
  return new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? "" : JSON.stringify(body);
  res.writeHead(status, {
    ...(body === undefined ? {} : { "content-type": "application/json; charset=utf-8" }),
    ...headers,
  });
  res.end(text);
  return status;
}

function control(req, res, url, body) {
  const route = `${req.method} ${url.pathname}`;
  if (route === "GET /__standin/requests") return send(res, 200, requests);
  if (route === "GET /__standin/state")
    return send(res, 200, { github: state.github, gitlab: state.gitlab });
  if (route === "POST /__standin/fail") {
    // {method, path (a regex over the full path), status, count, headers, body, apply}
    const f = body || {};
    if (!f.method || !f.path || !f.status) return send(res, 400, { message: "method, path, status are required" });
    failures.push({ ...f, remaining: f.count || 1, regex: new RegExp(f.path) });
    return send(res, 204);
  }
  if (route === "POST /__standin/users") {
    // Another identity: {token, login, type?}; its requests act as that user.
    const u = body || {};
    if (!u.token || !u.login) return send(res, 400, { message: "token and login are required" });
    state.users.set(u.token, { id: 100 + state.users.size, login: u.login, type: u.type || "User", gitlab_username: u.login });
    return send(res, 204);
  }
  if (route === "POST /__standin/gitlab_projects") {
    // {token, projects: [id, ...]}: the GitLab projects that identity is a member of (by
    // default every project); requests for another project are answered 404.
    const u = body || {};
    const user = state.users.get(u.token);
    if (!user || !Array.isArray(u.projects)) return send(res, 400, { message: "a known token and projects are required" });
    user.gitlab_projects = u.projects.map(String);
    return send(res, 204);
  }
  if (route === "POST /__standin/changes") {
    // A pull/merge request and the commits it is known by: {forge, project, number, head_sha, merge_commit_sha, state}
    const c = body || {};
    const list = c.forge === "gitlab" ? state.gitlab.mrs : state.github.pulls;
    list.push(c);
    return send(res, 204);
  }
  return send(res, 404, { message: "unknown control endpoint" });
}

function takeFailure(method, fullPath) {
  const f = failures.find((f) => f.remaining > 0 && f.method === method && f.regex.test(fullPath));
  if (!f) return null;
  f.remaining -= 1;
  failures = failures.filter((x) => x.remaining > 0);
  return f;
}

function answerFailure(res, f) {
  if (typeof f.raw === "string") {
    // A verbatim answer (hostile or malformed), for clients' robustness tests.
    res.writeHead(f.status, { "content-type": "application/json", ...(f.headers || {}) });
    res.end(f.raw);
    return f.status;
  }
  return send(res, f.status, f.body || { message: `injected failure ${f.status}` }, f.headers || {});
}

// A serve function's answer: a refusal by a forge rule (a limit, an unknown commit) is recorded as
// a violation, since a well-behaved client never sends such a request.
function refuse(c, res, status, body, headers) {
  if (status >= 400 && status !== 404) c.record.violations.push(`refused by a forge rule: ${JSON.stringify(body)}`);
  return send(res, status, body, headers);
}

// Pagination: a page of `items` and the headers the forge sends with it.
function paginate(items, query, linkBase, maxPer = 100, defaultPer = 30) {
  const per = Math.max(Math.min(Number(query.get("per_page") || defaultPer), maxPer), 1);
  const page = Math.max(Number(query.get("page") || 1), 1);
  const last = Math.max(Math.ceil(items.length / per), 1);
  const slice = items.slice((page - 1) * per, page * per);
  const link = (p, rel) => `<${linkBase}?per_page=${per}&page=${p}>; rel="${rel}"`;
  const links = [];
  if (page < last) links.push(link(page + 1, "next"), link(last, "last"));
  if (page > 1) links.push(link(1, "first"), link(page - 1, "prev"));
  return { slice, page, per, last, links };
}

// ---------------------------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------------------------

function githubCheck(req, rest, url, raw) {
  const segments = rest.split("/").slice(1);
  const candidates = GITHUB_OPERATIONS.filter((o) => o.method === req.method);
  let op = null;
  let params = null;
  for (const o of candidates) {
    params = matchTemplate(o, segments);
    if (params) {
      op = o;
      break;
    }
  }
  if (!op) return { status: 404, violations: [`no operation ${req.method} ${rest} in the API description`] };
  const violations = [];
  for (const [name, value] of Object.entries(params)) checkScalar(op.pathParams[name]?.schema, value, `path parameter ${name}`, violations);
  if (violations.length) return { op, params, status: 404, violations };
  for (const [name, value] of url.searchParams) {
    const p = op.queryParams[name];
    if (!p) violations.push(`query parameter ${name} is not defined for ${op.operationId}`);
    else checkScalar(p.schema, value, `query parameter ${name}`, violations);
  }
  for (const [name, p] of Object.entries(op.queryParams))
    if (p.required && !url.searchParams.has(name)) violations.push(`query parameter ${name} is required`);
  let json;
  if (raw.length) {
    const type = (req.headers["content-type"] || "").split(";")[0].trim();
    if (type !== "application/json") violations.push(`body sent with content-type ${JSON.stringify(type)}, not application/json`);
    try {
      json = JSON.parse(raw.toString("utf8"));
    } catch {
      violations.push("body is not valid JSON");
    }
  }
  if (op.body) {
    const schema = op.body.content && op.body.content["application/json"] && op.body.content["application/json"].schema;
    if (json === undefined) {
      if (op.body.required) violations.push("a JSON request body is required");
    } else if (schema) checkSchema(schema, json, "body", violations, true);
  } else if (raw.length) violations.push(`${op.operationId} takes no request body`);
  return { op, params, json, status: violations.length ? 422 : 0, violations };
}

function githubUser(u) {
  const html = `http://github.invalid/${encodeURIComponent(u.login)}`;
  return { login: u.login, id: u.id, node_id: `U_${u.id}`, type: u.type, site_admin: false, html_url: html };
}

function githubServe(req, res, c, user, base, url, failure) {
  const g = state.github;
  const send = (res, status, body, headers) => refuse(c, res, status, body, headers);
  const { op, params, json } = c;
  const repoKey = `${params.owner}/${params.repo}`.toLowerCase();
  const apiRepo = `${base}/repos/${params.owner}/${params.repo}`;
  const web = `http://github.invalid/${params.owner}/${params.repo}`;
  const commentView = (x) => overlay(exampleAnswer("issues/get-comment", "200"), {
    id: x.id, node_id: `IC_${x.id}`, url: `${apiRepo}/issues/comments/${x.id}`,
    html_url: `${web}/pull/${x.issue}#issuecomment-${x.id}`, issue_url: `${apiRepo}/issues/${x.issue}`,
    body: x.body, user: githubUser(x.user), created_at: x.created_at, updated_at: x.updated_at,
    author_association: x.user.type === "Bot" ? "NONE" : "MEMBER", performed_via_github_app: null,
  });
  const statusView = (s) => overlay(exampleAnswer("repos/create-commit-status", "201"), {
    url: `${apiRepo}/statuses/${s.sha}`, avatar_url: null, id: s.id, node_id: `SC_${s.id}`, state: s.state,
    description: s.description, target_url: s.target_url, context: s.context,
    created_at: s.created_at, updated_at: s.created_at, creator: githubUser(s.user),
  });
  const tooLong = (field, max) => ({
    message: "Validation Failed",
    errors: [{ resource: "IssueComment", code: "custom", field, message: `${field} is too long (maximum is ${max} characters)` }],
    documentation_url: "https://docs.github.com/rest",
  });
  const findComment = () => g.comments.find((x) => x.repo === repoKey && x.id === Number(params.comment_id));
  const findIssue = () => g.issues.find((x) => x.repo === repoKey && x.number === Number(params.issue_number));
  const issueView = (x) => {
    const v = overlay(exampleAnswer("issues/get", "200"), {
      id: x.id, node_id: `I_${x.id}`, number: x.number, url: `${apiRepo}/issues/${x.number}`,
      repository_url: apiRepo, labels_url: `${apiRepo}/issues/${x.number}/labels{/name}`,
      comments_url: `${apiRepo}/issues/${x.number}/comments`, events_url: `${apiRepo}/issues/${x.number}/events`,
      html_url: `${web}/issues/${x.number}`, title: x.title, body: x.body, state: x.state,
      state_reason: x.state_reason, user: overlay(exampleAnswer("issues/get-comment", "200").user, githubUser(x.user)),
      labels: [], assignee: null, assignees: [],
      milestone: null, locked: false, comments: 0, closed_at: x.closed_at, created_at: x.created_at,
      updated_at: x.updated_at, closed_by: null, author_association: x.user.type === "Bot" ? "NONE" : "MEMBER",
      performed_via_github_app: null,
    });
    delete v.pull_request; // an issue, not a pull request
    return v;
  };
  const notFound = () => send(res, 404, { message: "Not Found", documentation_url: "https://docs.github.com/rest" });
  const later = (status, body, headers) => {
    c.record.standin_errors.push(...checkAnswer(op, String(status), body));
    return failure ? answerFailure(res, failure) : send(res, status, body, headers);
  };

  switch (op.operationId) {
    case "issues/create-comment": {
      if ([...json.body].length > GITHUB_COMMENT_MAX) return send(res, 422, tooLong("body", GITHUB_COMMENT_MAX));
      const t = now();
      const x = { id: g.nextId++, repo: repoKey, issue: Number(params.issue_number), body: json.body, user, created_at: t, updated_at: t };
      g.comments.push(x);
      return later(201, commentView(x), { location: `${apiRepo}/issues/comments/${x.id}` });
    }
    case "issues/list-comments": {
      const all = g.comments.filter((x) => x.repo === repoKey && x.issue === Number(params.issue_number));
      const p = paginate(all, url.searchParams, `${apiRepo}/issues/${params.issue_number}/comments`);
      return later(200, p.slice.map(commentView), p.links.length ? { link: p.links.join(", ") } : {});
    }
    case "issues/get-comment": {
      const x = findComment();
      return x ? later(200, commentView(x)) : notFound();
    }
    case "issues/update-comment": {
      const x = findComment();
      if (!x) return notFound();
      if ([...json.body].length > GITHUB_COMMENT_MAX) return send(res, 422, tooLong("body", GITHUB_COMMENT_MAX));
      x.body = json.body;
      x.updated_at = now();
      return later(200, commentView(x));
    }
    case "issues/delete-comment": {
      const x = findComment();
      if (!x) return notFound();
      g.comments = g.comments.filter((y) => y !== x);
      return later(204);
    }
    case "repos/create-commit-status": {
      const sha = params.sha;
      if (!/^[0-9a-f]{40}$/.test(sha) && !/^[0-9a-f]{64}$/.test(sha))
        return send(res, 422, { message: `No commit found for SHA: ${sha}`, documentation_url: "https://docs.github.com/rest/commits/statuses#create-a-commit-status" });
      const context = json.context === undefined ? "default" : json.context;
      if (json.description && [...json.description].length > GITHUB_STATUS_DESCRIPTION_MAX)
        return send(res, 422, {
          message: "Validation Failed",
          errors: [{ resource: "Status", code: "custom", field: "description", message: `description is too long (maximum is ${GITHUB_STATUS_DESCRIPTION_MAX} characters)` }],
        });
      const same = g.statuses.filter((s) => s.repo === repoKey && s.sha === sha && s.context.toLowerCase() === context.toLowerCase());
      if (same.length >= GITHUB_STATUSES_PER_CONTEXT)
        return send(res, 422, { message: "Validation Failed", errors: [{ resource: "Status", code: "custom", message: "This SHA and context has reached the maximum number of statuses." }] });
      const s = {
        id: g.nextId++, repo: repoKey, sha, state: json.state, context, user,
        description: json.description ?? null, target_url: json.target_url ?? null, created_at: now(),
      };
      g.statuses.push(s);
      return later(201, statusView(s));
    }
    case "repos/list-commit-statuses-for-ref": {
      const all = g.statuses.filter((s) => s.repo === repoKey && s.sha === params.ref).reverse();
      const p = paginate(all, url.searchParams, `${apiRepo}/commits/${params.ref}/statuses`);
      return later(200, p.slice.map(statusView), p.links.length ? { link: p.links.join(", ") } : {});
    }
    case "repos/get-combined-status-for-ref": {
      const latest = new Map();
      for (const s of g.statuses.filter((s) => s.repo === repoKey && s.sha === params.ref)) latest.set(s.context.toLowerCase(), s);
      const list = [...latest.values()];
      const combined = list.some((s) => s.state === "error" || s.state === "failure")
        ? "failure"
        : list.length === 0 || list.some((s) => s.state === "pending") ? "pending" : "success";
      const answer = overlay(exampleAnswer(op.operationId, "200"), {
        state: combined, sha: params.ref, total_count: list.length,
        commit_url: `${apiRepo}/commits/${params.ref}`, url: `${apiRepo}/commits/${params.ref}/status`,
      });
      answer.statuses = list.map(statusView);
      return later(200, answer);
    }
    case "repos/list-pull-requests-associated-with-commit": {
      const sha = params.commit_sha;
      const all = g.pulls.filter((p) => `${p.project}`.toLowerCase() === repoKey && (p.head_sha === sha || p.merge_commit_sha === sha));
      return later(200, all.map((p) => overlay(exampleAnswer(op.operationId, "200"), {
        number: p.number, state: p.state === "merged" ? "closed" : p.state || "closed", merged_at: p.state === "merged" ? now() : null,
        merge_commit_sha: p.merge_commit_sha || null, head: { sha: p.head_sha }, html_url: `${web}/pull/${p.number}`,
        // (the example's requested team lacks the `type` its own schema requires; ours has none)
        requested_teams: [], requested_reviewers: [], labels: [], assignees: [],
      })));
    }
    // Issues (`airlock ci drift`: one per drifted stack). Numbers are their own sequence here.
    case "issues/create": {
      if (json.body !== undefined && [...json.body].length > GITHUB_COMMENT_MAX) return send(res, 422, tooLong("body", GITHUB_COMMENT_MAX));
      const t = now();
      const x = {
        id: g.nextId++, number: g.nextIssue++, repo: repoKey, title: String(json.title), body: json.body ?? null,
        state: "open", state_reason: null, user, created_at: t, updated_at: t, closed_at: null,
      };
      g.issues.push(x);
      return later(201, issueView(x), { location: `${apiRepo}/issues/${x.number}` });
    }
    case "issues/list-for-repo": {
      const want = url.searchParams.get("state") || "open";
      const creator = url.searchParams.get("creator");
      const all = g.issues.filter((x) => x.repo === repoKey && (want === "all" || x.state === want)
        && (!creator || x.user.login.toLowerCase() === creator.toLowerCase()));
      const p = paginate(all, url.searchParams, `${apiRepo}/issues`);
      return later(200, p.slice.map(issueView), p.links.length ? { link: p.links.join(", ") } : {});
    }
    case "issues/get": {
      const x = findIssue();
      return x ? later(200, issueView(x)) : notFound();
    }
    case "issues/update": {
      const x = findIssue();
      if (!x) return notFound();
      if (json.body !== undefined && json.body !== null && [...json.body].length > GITHUB_COMMENT_MAX) return send(res, 422, tooLong("body", GITHUB_COMMENT_MAX));
      if (json.title !== undefined) x.title = String(json.title);
      if (json.body !== undefined) x.body = json.body;
      if (json.state !== undefined && json.state !== x.state) {
        x.state = json.state;
        x.closed_at = json.state === "closed" ? now() : null;
        x.state_reason = json.state === "closed" ? (json.state_reason || "completed") : "reopened";
      }
      x.updated_at = now();
      return later(200, issueView(x));
    }
    default:
      return send(res, 501, { message: `the stand-in does not serve ${op.operationId} (valid by the description, but not used by airlock)` });
  }
}

// ---------------------------------------------------------------------------------------------
// GitLab
// ---------------------------------------------------------------------------------------------

function gitlabCheck(req, rest, url, raw) {
  const segments = rest.split("/").slice(1);
  const m = gitlabMatch(req.method, segments);
  if (!m) return { status: 404, body: { error: "404 Not Found" }, violations: [`no documented endpoint ${req.method} ${rest} in GITLAB_ENDPOINTS`] };
  const { ep, params } = m;
  const violations = [];
  for (const [name, value] of Object.entries(params)) checkGitlabValue(ep.path_params[name], value, `path parameter ${name}`, violations);
  const input = {};
  for (const [k, v] of url.searchParams) input[k] = v;
  if (raw.length) {
    const type = (req.headers["content-type"] || "").split(";")[0].trim();
    if (type !== "application/json") violations.push(`body sent with content-type ${JSON.stringify(type)}, not application/json`);
    try {
      const json = JSON.parse(raw.toString("utf8"));
      if (typeOf(json) !== "object") violations.push("body is not a JSON object");
      else Object.assign(input, json);
    } catch {
      violations.push("body is not valid JSON");
    }
  }
  for (const [k, v] of Object.entries(input)) {
    const spec = ep.params[k];
    // GitLab ignores unknown parameters; the stand-in refuses them so a misspelt one cannot pass unnoticed.
    if (!spec) violations.push(`parameter ${k} is not documented for ${ep.method} ${ep.path}`);
    else checkGitlabValue(spec, v, `parameter ${k}`, violations);
  }
  for (const [k, spec] of Object.entries(ep.params))
    if (spec.required && (input[k] === undefined || input[k] === "")) violations.push(`${k} is missing`);
  // Grape's `at_least_one_of` and `mutually_exclusive`, as GitLab declares them.
  if (ep.at_least_one && !ep.at_least_one.some((k) => input[k] !== undefined))
    violations.push(`${ep.at_least_one.join(", ")} are missing, at least one parameter must be provided`);
  for (const group of ep.exclusive || [])
    if (group.filter((k) => input[k] !== undefined).length > 1) violations.push(`${group.join(", ")} are mutually exclusive`);
  const status = violations.length ? 400 : 0;
  const unserved = Object.keys(input).filter((k) => ep.params[k] && ep.params[k].unserved);
  return { ep, params, input, status, body: { error: violations.join(", ") }, violations, unserved };
}

function gitlabServe(req, res, c, user, base, url, failure) {
  const g = state.gitlab;
  const send = (res, status, body, headers) => refuse(c, res, status, body, headers);
  const { ep, params, input } = c;
  const project = params.id;
  const later = (status, body, headers) => (failure ? answerFailure(res, failure) : send(res, status, body, headers));
  const author = { id: user.id, username: user.gitlab_username, name: user.login, state: "active", bot: user.type === "Bot" };
  const noteView = (n) => ({
    id: n.id, type: null, body: n.body, author: n.author, created_at: n.created_at, updated_at: n.updated_at,
    system: false, noteable_id: 1, noteable_type: "MergeRequest", noteable_iid: n.iid, resolvable: false, internal: false,
  });
  const note = () => g.notes.find((n) => n.project === project && n.iid === Number(params.merge_request_iid) && n.id === Number(params.note_id));
  const notFound = () => send(res, 404, { message: "404 Not found" });
  const tooLong = () => send(res, 400, { message: { note: [`is too long (maximum is ${GITLAB_NOTE_MAX} characters)`] } });
  const issue = () => g.issues.find((x) => x.project === project && x.iid === Number(params.issue_iid));
  const issueTooLong = (field, max) => send(res, 400, { message: { [field]: [`is too long (maximum is ${max} characters)`] } });
  // https://docs.gitlab.com/api/issues/#retrieve-a-project-issue (the example answer's fields)
  const issueView = (x) => {
    const web = `https://gitlab.example/project-${x.project}/-/issues/${x.iid}`;
    const api = `${base}/projects/${encodeURIComponent(x.project)}/issues/${x.iid}`;
    return {
      id: x.id, iid: x.iid, project_id: Number(x.project) || 0, title: x.title, description: x.description,
      state: x.state, created_at: x.created_at, updated_at: x.updated_at, closed_at: x.closed_at, closed_by: x.closed_by,
      labels: [], milestone: null, assignees: [], assignee: null, author: x.author, type: "ISSUE", user_notes_count: 0,
      merge_requests_count: 0, upvotes: 0, downvotes: 0, due_date: null, confidential: x.confidential, discussion_locked: null,
      issue_type: "issue", severity: "UNKNOWN", web_url: web, imported: false, imported_from: "none",
      references: { short: `#${x.iid}`, relative: `#${x.iid}`, full: `project-${x.project}#${x.iid}` },
      time_stats: { time_estimate: 0, total_time_spent: 0, human_time_estimate: null, human_total_time_spent: null },
      task_completion_status: { count: 0, completed_count: 0 }, has_tasks: false,
      _links: { self: api, notes: `${api}/notes`, award_emoji: `${api}/award_emoji`, project: `${base}/projects/${encodeURIComponent(x.project)}`, closed_as_duplicate_of: null },
    };
  };
  const pageHeaders = (p, total) => ({
    "x-page": String(p.page), "x-per-page": String(p.per), "x-total": String(total), "x-total-pages": String(p.last),
    "x-next-page": p.page < p.last ? String(p.page + 1) : "", "x-prev-page": p.page > 1 ? String(p.page - 1) : "",
    ...(p.links.length ? { link: p.links.join(", ") } : {}),
  });

  // A documented parameter the stand-in does not implement: not silently ignored.
  if (c.unserved.length) {
    c.record.standin_errors.push(`the stand-in does not implement ${c.unserved.join(", ")} for ${ep.method} ${ep.path}`);
    return send(res, 501, { message: `not served: ${c.unserved.join(", ")}` });
  }
  // A token sees only the projects it is a member of (a project access token: its one project);
  // another project is a 404, as GitLab answers for a project the token may not see.
  if (project !== undefined && user.gitlab_projects && !user.gitlab_projects.includes(project))
    return send(res, 404, { message: "404 Project Not Found" });

  switch (ep.op) {
    case "user":
      return later(200, { ...author, bot: user.type === "Bot" });
    case "list_notes": {
      let all = g.notes.filter((n) => n.project === project && n.iid === Number(params.merge_request_iid));
      if ((input.sort || "desc") === "desc") all = [...all].reverse();
      const p = paginate(all, url.searchParams, `${base}/projects/${encodeURIComponent(project)}/merge_requests/${params.merge_request_iid}/notes`, 100, 20);
      return later(200, p.slice.map(noteView), pageHeaders(p, all.length));
    }
    case "get_note": {
      const n = note();
      return n ? later(200, noteView(n)) : notFound();
    }
    case "create_note": {
      if ([...input.body].length > GITLAB_NOTE_MAX) return tooLong();
      const t = now();
      const n = { id: g.nextId++, project, iid: Number(params.merge_request_iid), body: input.body, author, created_at: t, updated_at: t };
      g.notes.push(n);
      return later(201, noteView(n));
    }
    case "update_note": {
      const n = note();
      if (!n) return notFound();
      if ([...input.body].length > GITLAB_NOTE_MAX) return tooLong();
      // GitLab lets only the note's author edit it ("403 Forbidden"), unlike GitHub.
      if (n.author.id !== author.id) return send(res, 403, { message: "403 Forbidden" });
      n.body = input.body;
      n.updated_at = now();
      return later(200, noteView(n));
    }
    case "delete_note": {
      const n = note();
      if (!n) return notFound();
      g.notes = g.notes.filter((x) => x !== n);
      return later(204);
    }
    case "create_status": {
      const sha = params.sha;
      if (!/^[0-9a-f]{40}$/.test(sha)) return send(res, 404, { message: "404 Commit Not Found" });
      const name = input.name ?? input.context ?? "default";
      const ref = input.ref ?? null;
      const last = [...g.statuses].reverse().find((s) => s.project === project && s.sha === sha && s.name === name && s.ref === ref);
      // GitLab refuses to move a status into the state it is already in while it is not finished
      // (the status is a job; `pending -> pending` is "Cannot transition status via :enqueue").
      if (last && last.status === input.state && (input.state === "pending" || input.state === "running"))
        return send(res, 400, { message: `Cannot transition status via :${input.state === "pending" ? "enqueue" : "run"} from :${last.status} (Reason(s): Status cannot transition via "${input.state === "pending" ? "enqueue" : "run"}")` });
      const s = {
        id: g.nextId++, project, sha, ref, status: input.state, name, target_url: input.target_url ?? null,
        description: input.description ?? null, created_at: now(), author, allow_failure: false, coverage: input.coverage ?? null,
      };
      g.statuses.push(s);
      const { project: _p, ...view } = s;
      return later(201, view);
    }
    case "list_statuses": {
      let all = g.statuses.filter((s) => s.project === project && s.sha === params.sha);
      if (input.name) all = all.filter((s) => s.name === input.name);
      if (input.ref) all = all.filter((s) => s.ref === input.ref);
      if (!(input.all === true || input.all === "true")) {
        const latest = new Map();
        for (const s of all) latest.set(`${s.name}\u0000${s.ref}`, s);
        all = [...latest.values()];
      }
      const p = paginate(all, url.searchParams, `${base}/projects/${encodeURIComponent(project)}/repository/commits/${params.sha}/statuses`, 100, 20);
      return later(200, p.slice.map(({ project: _p, ...v }) => v), pageHeaders(p, all.length));
    }
    case "commit_mrs": {
      const all = g.mrs.filter((m) => `${m.project}` === project && (m.head_sha === params.sha || m.merge_commit_sha === params.sha));
      return later(200, all.map((m) => ({ iid: m.number, state: m.state === "open" ? "opened" : m.state || "merged", sha: m.head_sha, merge_commit_sha: m.merge_commit_sha || null })));
    }
    // Issues. GitLab lets any member with the Planner role or more edit an issue, whoever
    // opened it (unlike notes): that another's issue is never edited is the client's to keep.
    case "list_issues": {
      const want = input.state || "all";
      const words = (input.search || "").split(/\s+/).filter((w) => w.length >= 3).map((w) => w.toLowerCase());
      const fields = (input.in || "title,description").split(",");
      let all = g.issues.filter((x) => x.project === project
        && (want === "all" || x.state === want)
        && (input.author_id === undefined || x.author.id === Number(input.author_id))
        && (input.author_username === undefined || x.author.username === input.author_username)
        && (input.scope !== "created_by_me" || x.author.id === author.id)
        && (input.scope !== "assigned_to_me")
        // GitLab's issue search: every word of three characters or more, anywhere in the fields searched
        && words.every((w) => fields.some((f) => (x[f] || "").toLowerCase().includes(w))));
      const key = input.order_by === "updated_at" ? "updated_at" : "created_at";
      all = [...all].sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : a.id - b.id));
      if ((input.sort || "desc") === "desc") all.reverse();
      const p = paginate(all, url.searchParams, `${base}/projects/${encodeURIComponent(project)}/issues`, 100, 20);
      return later(200, p.slice.map(issueView), pageHeaders(p, all.length));
    }
    case "get_issue": {
      const x = issue();
      return x ? later(200, issueView(x)) : notFound();
    }
    case "create_issue": {
      if (input.title.trim() === "") return send(res, 400, { message: { title: ["can't be blank"] } });
      if ([...input.title].length > GITLAB_ISSUE_TITLE_MAX) return issueTooLong("title", GITLAB_ISSUE_TITLE_MAX);
      if (input.description !== undefined && [...input.description].length > GITLAB_DESCRIPTION_MAX)
        return issueTooLong("description", GITLAB_DESCRIPTION_MAX);
      const t = now();
      g.nextIid[project] = (g.nextIid[project] || 0) + 1;
      const x = {
        id: g.nextId++, iid: g.nextIid[project], project, title: input.title, description: input.description ?? null,
        state: "opened", author, created_at: t, updated_at: t, closed_at: null, closed_by: null,
        confidential: input.confidential === true || input.confidential === "true",
      };
      g.issues.push(x);
      return later(201, issueView(x));
    }
    case "update_issue": {
      const x = issue();
      if (!x) return notFound();
      if (input.title !== undefined) {
        if (input.title.trim() === "") return send(res, 400, { message: { title: ["can't be blank"] } });
        if ([...input.title].length > GITLAB_ISSUE_TITLE_MAX) return issueTooLong("title", GITLAB_ISSUE_TITLE_MAX);
      }
      if (input.description !== undefined && [...input.description].length > GITLAB_DESCRIPTION_MAX)
        return issueTooLong("description", GITLAB_DESCRIPTION_MAX);
      if (input.title !== undefined) x.title = input.title;
      if (input.description !== undefined) x.description = input.description;
      if (input.confidential !== undefined) x.confidential = input.confidential === true || input.confidential === "true";
      // Closing a closed issue (or reopening an open one) changes nothing, as on GitLab.
      if (input.state_event === "close" && x.state === "opened") {
        x.state = "closed";
        x.closed_at = now();
        x.closed_by = author;
      } else if (input.state_event === "reopen" && x.state === "closed") {
        x.state = "opened";
        x.closed_at = null;
        x.closed_by = null;
      }
      x.updated_at = now();
      return later(200, issueView(x));
    }
    default:
      return send(res, 501, { message: `not served: ${ep.op}` });
  }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

function bearer(req) {
  const h = req.headers.authorization;
  if (!h) return null;
  const m = /^(?:Bearer|token) (.+)$/i.exec(h);
  return m ? m[1] : "";
}

async function handle(req, res) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return send(res, 413, { message: "request body too large for the stand-in" });
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks);
  const host = `http://${req.headers.host || "127.0.0.1"}`;
  const url = new URL(req.url, host);
  if (url.pathname.startsWith("/__standin/")) {
    let json = null;
    try {
      json = raw.length ? JSON.parse(raw.toString("utf8")) : null;
    } catch {
      return send(res, 400, { message: "control body is not JSON" });
    }
    return control(req, res, url, json);
  }

  const record = {
    method: req.method, path: url.pathname, query: Object.fromEntries(url.searchParams),
    body: raw.length ? raw.toString("utf8") : null, user_agent: req.headers["user-agent"] || null,
    forge: null, operation: null, status: 0, violations: [], standin_errors: [],
  };
  requests.push(record);
  const answer = (status) => (record.status = status);

  let forge;
  let rest;
  if (url.pathname.startsWith("/github/")) [forge, rest] = ["github", url.pathname.slice("/github".length)];
  else if (url.pathname.startsWith("/gitlab/api/v4/")) [forge, rest] = ["gitlab", url.pathname.slice("/gitlab/api/v4".length)];
  else {
    record.violations.push("neither under /github nor under /gitlab/api/v4");
    return answer(send(res, 404, { message: "Not Found" }));
  }
  record.forge = forge;

  // Identity first, as the forges do: no User-Agent (GitHub), then the token.
  if (forge === "github" && !req.headers["user-agent"]) {
    record.violations.push("no User-Agent header (GitHub refuses such requests)");
    return answer(send(res, 403, { message: "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required)." }));
  }
  const token = forge === "gitlab" && req.headers["private-token"] !== undefined ? req.headers["private-token"] : bearer(req);
  const user = token ? state.users.get(token) : undefined;
  if (!user) {
    record.violations.push(token === null ? "no credentials" : "credentials do not match the stand-in's token");
    return answer(forge === "github"
      ? send(res, 401, { message: token === null ? "Requires authentication" : "Bad credentials", documentation_url: "https://docs.github.com/rest" })
      : send(res, 401, { message: "401 Unauthorized" }));
  }

  const c = forge === "github" ? githubCheck(req, rest, url, raw) : gitlabCheck(req, rest, url, raw);
  c.record = record;
  record.operation = c.op ? c.op.operationId : c.ep ? `${c.ep.method} ${c.ep.path}` : null;
  if (c.violations.length) {
    record.violations.push(...c.violations);
    const body = forge === "github"
      ? { message: c.status === 404 ? "Not Found" : "Invalid request.", errors: c.violations, documentation_url: "https://docs.github.com/rest" }
      : c.body;
    return answer(send(res, c.status, body));
  }

  // An injected failure: answered instead (default) or after (`apply`) the request takes effect.
  const failure = takeFailure(req.method, url.pathname);
  if (failure && !failure.apply) return answer(answerFailure(res, failure));
  const base = `${host}/${forge === "github" ? "github" : "gitlab/api/v4"}`;
  const status = forge === "github"
    ? githubServe(req, res, c, user, base, url, failure)
    : gitlabServe(req, res, c, user, base, url, failure);
  return answer(status);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    console.error("standin: internal error", e);
    if (!res.headersSent) send(res, 500, { message: `stand-in bug: ${e && e.message}` });
  });
});
server.listen(PORT, "127.0.0.1", () => {
  console.log(`listening http://127.0.0.1:${server.address().port}`);
});
