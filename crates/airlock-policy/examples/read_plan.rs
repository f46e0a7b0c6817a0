//! Reads a plan and prints how many changes of each kind it has (a quick reader benchmark).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: read_plan PLAN.json")?;
    let file = std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(path)?);
    let mut counts = std::collections::BTreeMap::new();
    let info = airlock_policy::plan::read_plan(file, |rc| {
        *counts.entry(rc.kind().as_str()).or_insert(0u64) += 1;
    })?;
    println!("{info:?}\n{counts:?}");
    Ok(())
}
