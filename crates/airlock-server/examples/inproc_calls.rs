//! Benchmark (`bench/inproc/run.sh`): the CPU of one in-process API call (`inproc::call`, what
//! every MCP tool and console page makes), next to what main's `inproc::call` did per call: build
//! every route (measured as `router::table`, which builds them) and layer and state the router
//! (`router::build` per call). CPU time of the whole process (all threads), from /proc/self/stat, over many
//! calls of `GET /api/v1/whoami` with an admin token on a SQLite store; calls alternate in
//! blocks so both see the same load.

use std::sync::Arc;

use airlock_core::Role;
use airlock_server::{inproc, router, tokens, AppState, ServerConfig};
use airlock_store::{NewAudit, NewToken, SqliteStore, Store};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use tower::ServiceExt;

/// CPU seconds this process has used (user + system, all threads).
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .map_or(4000, |n| n.parse().expect("CALLS"));
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
    let state = AppState::new(Arc::clone(&store), ServerConfig::default());
    let g = tokens::generate();
    store
        .create_token(
            NewToken {
                id: g.id.clone(),
                secret_hash: g.hash,
                name: "bench".into(),
                role: Role::Admin,
                stacks: Vec::new(),
                expires_at: None,
                created_by: "bench".into(),
                run_id: None,
                user: g.id.clone(),
                parent_id: None,
                mint_limit: None,
                read_stacks: Vec::new(),
                minted_by: None,
                job_ref: None,
            },
            NewAudit::ok("bench", "token.create", None, serde_json::json!({})),
        )
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let once = || async {
            let r = inproc::call(&state, &g.secret, Method::GET, "/api/v1/whoami", None)
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK);
        };
        let rebuilt = || async {
            let req = Request::builder()
                .uri("/api/v1/whoami")
                .header(header::AUTHORIZATION, format!("Bearer {}", g.secret))
                .body(Body::empty())
                .unwrap();
            let resp = router::build(Arc::clone(&state))
                .oneshot(req)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
        };
        for _ in 0..200 {
            once().await;
            rebuilt().await;
        }
        let (mut cached, mut built) = (0.0, 0.0);
        let block = 200;
        for _ in 0..calls.div_ceil(block) {
            let t = cpu();
            for _ in 0..block {
                once().await;
            }
            cached += cpu() - t;
            let t = cpu();
            for _ in 0..block {
                rebuilt().await;
            }
            built += cpu() - t;
        }
        // What main's inproc::call also did per call and `router::build` no longer does: build
        // every route (`router::table` still builds them, as the authorization table's source).
        let mut routes = 0.0;
        for _ in 0..calls.div_ceil(block) {
            let t = cpu();
            for _ in 0..block {
                std::hint::black_box(router::table());
            }
            routes += cpu() - t;
        }
        let n = (calls.div_ceil(block) * block) as f64;
        let (cached, built, routes) = (cached / n * 1e6, built / n * 1e6, routes / n * 1e6);
        let before = built + routes;
        println!("in-process GET /api/v1/whoami, {n} calls each, CPU per call (all threads):");
        println!("  inproc::call, router built once (after):        {cached:.0} us");
        println!("  router::build per call (layers + state only):   {built:.0} us");
        println!("  building every route, per call:                 {routes:.0} us");
        println!("  before (main did both of the above per call):   {before:.0} us");
        println!("  ratio before/after: {:.2}", before / cached);
    });
}
