// scratch, not committed
use airlock_core::state::{ParsedState, StateSummary};
use std::time::Instant;
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(820);
    let el = |i: usize, tag: &str| {
        format!("    {{\n      \"mode\": \"managed\",\n      \"type\": \"aws_s3_bucket\",\n      \"name\": \"b{i}\",\n      \"provider\": \"provider[\\\"registry.terraform.io/hashicorp/aws\\\"]\",\n      \"instances\": [\n        {{\n          \"schema_version\": 0,\n          \"attributes\": {{\n            \"arn\": \"arn:aws:s3:::bucket-{i}\",\n            \"id\": \"id-{i}\",\n            \"tags\": {{\"Name\": \"{tag}\"}},\n            \"policy\": \"{}\"\n          }},\n          \"sensitive_attributes\": [],\n          \"private\": \"eyJzY2hlbWFfdmVyc2lvbiI6IjAifQ==\"\n        }}\n      ]\n    }}", "x".repeat(800))
    };
    let doc = |serial: u64, changed: usize| {
        let els: Vec<String> = (0..n)
            .map(|i| el(i, if i == changed { "v2" } else { "v1" }))
            .collect();
        format!("{{\n  \"version\": 4,\n  \"terraform_version\": \"1.11.4\",\n  \"serial\": {serial},\n  \"lineage\": \"6f1f7a8e-0a47-4b0e-9d5f-2f2f2a0e1c11\",\n  \"outputs\": {{}},\n  \"resources\": [\n{}\n  ]\n}}\n", els.join(",\n")).into_bytes()
    };
    let a = doc(1, usize::MAX);
    let b = doc(2, n / 2);
    println!("body {} bytes", a.len());
    for _ in 0..3 {
        let t = Instant::now();
        let s = StateSummary::parse(&b).unwrap();
        let full = t.elapsed();
        let prev = ParsedState::parse(a.clone(), None).unwrap();
        let t = Instant::now();
        let body = b.clone();
        let copy = t.elapsed();
        let t = Instant::now();
        let r = ParsedState::parse(body, Some(&prev)).unwrap();
        let reuse = t.elapsed();
        let t = Instant::now();
        let _ = std::str::from_utf8(&b).unwrap();
        let utf = t.elapsed();
        let t = Instant::now();
        drop(prev);
        let dropt = t.elapsed();
        assert_eq!(&s, r.summary().as_ref());
        println!("full {full:?} copy {copy:?} reuse {reuse:?} (reused {}) utf8 {utf:?} drop-prev {dropt:?}", r.reused_elements());
    }
}
