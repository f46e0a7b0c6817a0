//! The `airlock check --format json` pipeline without the CLI: read, judge, render (to a sink).
//! A quick way to profile the policy crate alone: `read_plan PLAN.json`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use airlock_policy::{analysis::Analyzer, config::Config, plan, report};
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: read_plan PLAN.json")?;
    let file = std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(path)?);
    let config = Config::default();
    let mut analyzer = Analyzer::new(&config, None);
    let mut out = report::json::open().len();
    let mut first = true;
    let info = plan::read_plan(file, |rc| {
        let r = analyzer.change(&rc);
        if let Some(piece) = report::json::change(&r, first) {
            out += piece.len();
            first = false;
        }
    })?;
    let decision = analyzer.finish(info);
    out += report::json::close(&decision).len();
    println!("{} bytes of JSON; decision {}", out, decision.verdict);
    Ok(())
}
