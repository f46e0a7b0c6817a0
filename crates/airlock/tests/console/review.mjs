// The console in a real browser: Debian's chromium, headless, driven by playwright-core.
// Run by crates/airlock/tests/it/console.rs, in two phases:
//   review   sign in as an agent (reads, cannot approve), as the author of another run (Approve
//            disabled), then as an approver: the destructive change comes first, XSS payloads
//            stay text, the count is typed, the run is approved; cross-site posts are refused.
//   applied  (after CI applied the run) the page shows the run applied with its log; the diff
//            between the last two versions shows the removed instances.
// Screenshots: $CONSOLE_ARTIFACTS/run-review.png (before approval), run-page.png (applied),
// diff-page.png.
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`review.mjs: ${name} is not set (source scripts/test-deps.sh; run through the Rust test)`);
    process.exit(2);
  }
  return v;
};
const require = createRequire(join(env("AIRLOCK_TEST_NODE_MODULES"), "noop.js"));
const { chromium } = require("playwright-core");

const phase = process.argv[2];
const base = env("AIRLOCK_URL");
const run = env("RUN");
const shots = env("CONSOLE_ARTIFACTS");
const XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>', "<script>alert(3)</script>"];

function check(cond, what) {
  if (!cond) {
    throw new Error(`check failed: ${what}`);
  }
  console.log(`ok: ${what}`);
}

const profile = mkdtempSync(join(tmpdir(), "airlock-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: env("AIRLOCK_TEST_CHROMIUM"),
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1400, height: 1000 },
});
const dialogs = [];
const page = context.pages()[0] ?? (await context.newPage());
page.on("dialog", async (d) => {
  dialogs.push(d.message());
  await d.dismiss();
});
const consoleErrors = [];
page.on("console", (m) => {
  if (m.type() === "error") consoleErrors.push(m.text());
});

async function signIn(token) {
  await page.goto(`${base}/ui/login`);
  await page.fill("#token", token);
  await Promise.all([page.waitForNavigation(), page.click("#sign-in")]);
  check(page.url().startsWith(`${base}/ui/`) && !page.url().includes("/login"), `signed in (${page.url()})`);
}

async function signOut() {
  await Promise.all([page.waitForNavigation(), page.click("text=Sign out")]);
  check(page.url().includes("/ui/login"), "signed out");
}

async function reviewPhase() {
  // An agent can read the run, never approve it; a forced click shows the API's refusal.
  await signIn(env("AGENT_TOKEN"));
  await page.goto(`${base}/ui/runs/${run}`);
  check(await page.isDisabled("#approve-button"), "agent: Approve is disabled");
  check((await page.textContent("#approve-why")).includes("never approve"), "agent: the page says why");
  await page.evaluate(() => {
    const b = document.getElementById("approve-button");
    b.disabled = false;
    b.removeAttribute("data-refused");
  });
  await Promise.all([page.waitForNavigation(), page.click("#approve-button")]);
  const refusal = await page.textContent("#error");
  check(/approve/.test(refusal) && refusal.includes("403"), `agent: forced approve refused by the API: ${refusal.trim()}`);
  await signOut();

  // The author of a run sees its Approve button disabled.
  await signIn(env("AUTHOR_TOKEN"));
  await page.goto(`${base}/ui/runs/${env("OWN_RUN")}`);
  check(await page.isDisabled("#approve-button"), "author: Approve is disabled");
  check((await page.textContent("#approve-why")).includes("You planned this run"), "author: the page says why");
  await signOut();

  // The approver reviews: destructive changes first, payloads as text, the count typed.
  await signIn(env("APPROVER_TOKEN"));
  await page.goto(`${base}/ui/runs/${run}`);
  const order = await page.evaluate(() =>
    ["decision", "destructive", "review", "metadata", "plan"].map((id) => {
      const el = document.getElementById(id);
      return el ? el.getBoundingClientRect().top + window.scrollY : -1;
    }),
  );
  check(order.every((y, i) => y >= 0 && (i === 0 || y > order[i - 1])), `decision, destructive changes, review, metadata, plan in that order (${order})`);
  const destructive = await page.textContent("#destructive");
  check(destructive.includes("terraform_data.gone[0]") && destructive.includes("terraform_data.gone[1]"), "both destroyed instances are listed first");
  const plan = await page.textContent("#plan");
  for (const payload of XSS) {
    check(plan.includes(payload), `the DOM holds the literal payload ${JSON.stringify(payload)}`);
  }
  check(plan.includes("safe\\u{202E}txt.exe") && !plan.includes("\u202e"), "the RTL override in a value is shown as an escape");
  check((await page.locator("#plan img").count()) === 0, "no <img> element was injected");
  check((await page.locator("script:not([src])").count()) === 0, "no inline <script> element exists");
  const sha = await page.textContent("#plan-sha");
  check(/^[0-9a-f]{64}$/.test(sha), `the plan hash is shown (${sha})`);
  check(await page.isDisabled("#approve-button"), "Approve waits for the destroy count");
  await page.fill("#confirm-destroy", "1");
  check(await page.isDisabled("#approve-button"), "a wrong count keeps it disabled");
  await page.fill("#confirm-destroy", "2");
  check(!(await page.isDisabled("#approve-button")), "the exact count enables it");
  await page.screenshot({ path: join(shots, "run-review.png"), fullPage: false });
  await Promise.all([page.waitForNavigation(), page.click("#approve-button")]);
  check((await page.textContent("#done")).includes("approval was recorded"), "approved");
  check((await page.textContent("#status")) === "approved", "the run is approved");
  const approvals = await page.textContent("#approvals");
  check(approvals.includes("bob") && approvals.includes(sha), "the approval shows who and the plan hash");

  // Cross-site posts: from another origin on the same site (the Strict cookie is sent, the
  // server refuses without the CSRF token and with Sec-Fetch-Site: same-site), and from
  // another site (the cookie is not even sent). Then a same-origin script without the token.
  const own = env("OWN_RUN");
  const target = `${base}/ui/runs/${own}/reject`;
  const attacker = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<form id=f method=post action="${target}"><input name=reason value=pwned></form><script>document.getElementById("f").submit()</script>`);
  });
  await new Promise((r) => attacker.listen(0, "127.0.0.1", r));
  const port = attacker.address().port;
  for (const host of ["127.0.0.1", "localhost"]) {
    const resp = page.waitForResponse((r) => r.url() === target);
    await page.goto(`http://${host}:${port}/`);
    const r = await resp;
    await page.waitForLoadState();
    // Same site (127.0.0.1, another port): the Strict cookie is sent and the server itself
    // refuses (Sec-Fetch-Site, no CSRF token). Another site: the cookie is withheld, so the
    // request has no session and is sent to sign in.
    const expected = host === "127.0.0.1" ? 403 : 303;
    check(r.status() === expected, `cross-site POST from ${host}:${port} refused (${r.status()})`);
  }
  attacker.close();
  await page.goto(`${base}/ui/runs/${own}`);
  const status = await page.evaluate(async (url) => {
    const r = await fetch(url, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "reason=no-token" });
    return r.status;
  }, target);
  check(status === 403, `a same-origin POST without the CSRF token is refused (${status})`);
  await page.reload();
  check((await page.textContent("#status")) === "needs_approval", "the other run is untouched");
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function livePhase() {
  await signIn(env("APPROVER_TOKEN"));
  await page.goto(`${base}/ui/runs/${run}`);
  for (let i = 0; i < 120 && (await page.textContent("#status")) !== "applying"; i++) {
    await sleep(250);
    await page.goto(`${base}/ui/runs/${run}`);
  }
  check((await page.textContent("#status")) === "applying", "the page shows the run applying");
  // The page's script polls the log; no reload: the text grows in place.
  await page.waitForFunction(
    () => (document.getElementById("live-log")?.textContent || "").includes("applying slowly"),
    null,
    { timeout: 30000 },
  );
  check(true, "the apply log appears on the page while Terraform runs");
  await page.locator("#live").scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(shots, "run-live.png"), fullPage: false });
  let status = "";
  for (let i = 0; i < 240 && status !== "applied"; i++) {
    await sleep(250);
    try {
      status = await page.textContent("#status");
    } catch {}
  }
  check(status === "applied", "the page reloads itself once the apply ends");
}

async function appliedPhase() {
  await signIn(env("APPROVER_TOKEN"));
  await page.goto(`${base}/ui/runs/${run}`);
  check((await page.textContent("#status")) === "applied", "the run is applied");
  const log = await page.textContent("#live-log");
  check(log.includes("Apply complete!"), "the page shows the apply log");
  await page.screenshot({ path: join(shots, "run-page.png"), fullPage: false });
  await page.goto(`${base}/ui/stacks/${encodeURIComponent(env("STACK"))}`);
  await Promise.all([page.waitForNavigation(), page.click("#compare")]);
  const summary = await page.textContent("#diff-summary");
  check(summary.includes("2 removed"), `the diff shows the removed instances (${summary})`);
  const body = await page.textContent("main");
  check(body.includes("terraform_data.gone[0]"), "the removed instance is named");
  check(body.includes(XSS[2]) && body.includes(XSS[0]), "changed values and hostile keys are shown as text");
  check((await page.locator("main img").count()) === 0, "no <img> element was injected");
  await page.screenshot({ path: join(shots, "diff-page.png"), fullPage: false });
}

let failed = null;
try {
  if (phase === "review") await reviewPhase();
  else if (phase === "live") await livePhase();
  else if (phase === "applied") await appliedPhase();
  else throw new Error(`unknown phase ${phase}`);
  check(dialogs.length === 0, `no dialog fired (${JSON.stringify(dialogs)})`);
  check(!consoleErrors.some((e) => /Content Security Policy/.test(e)), `no CSP violation (${JSON.stringify(consoleErrors)})`);
} catch (e) {
  failed = e;
  try {
    await page.screenshot({ path: join(shots, `failure-${phase}.png`) });
  } catch {}
}
await context.close();
rmSync(profile, { recursive: true, force: true });
if (failed) {
  console.error(`review.mjs ${phase}: ${failed.stack || failed}`);
  console.error(`at ${page.url()}`);
  process.exit(1);
}
console.log(`phase ${phase}: ok`);
