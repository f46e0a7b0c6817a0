//! `PlanFile::parse` on plan files crafted to make the server hold far more than it received: a
//! plan file is a zip whose members inflate up to ~1000x (a deflate bomb), and its protobuf and
//! JSON members can describe millions of tiny records. The server parses every uploaded plan
//! (an agent may upload), so a parse must stay within what the caller allows to inflate
//! (`max_inflated`) and a budget for what it decodes, whatever the shape. The heap this test
//! process asks for is counted (one test in this binary: the counter is process-wide).

use airlock_policy::planfile::PlanFile;
use peakmem_alloc::{PeakMemAlloc, PeakMemAllocTrait, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const MB: usize = 1024 * 1024;

/// A zip archive as Terraform writes one (no CRCs: the reader does not check them).
#[derive(Default)]
struct Zip {
    body: Vec<u8>,
    central: Vec<u8>,
    count: u16,
}

impl Zip {
    /// Adds `content` (deflated when `deflate`), declaring `declared` as its inflated size.
    fn member_declaring(&mut self, name: &str, content: &[u8], deflate: bool, declared: usize) {
        let data = if deflate {
            miniz_oxide::deflate::compress_to_vec(content, 10)
        } else {
            content.to_vec()
        };
        let method: u16 = if deflate { 8 } else { 0 };
        let offset = self.body.len() as u32;
        let (csize, usize_) = (data.len() as u32, declared as u32);
        let name_len = name.len() as u16;
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        for v in [20u16, 0, method, 0, 0] {
            local.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u32, csize, usize_] {
            local.extend_from_slice(&v.to_le_bytes());
        }
        for v in [name_len, 0] {
            local.extend_from_slice(&v.to_le_bytes());
        }
        local.extend_from_slice(name.as_bytes());
        self.body.extend_from_slice(&local);
        self.body.extend_from_slice(&data);
        self.central
            .extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        for v in [20u16, 20, 0, method, 0, 0] {
            self.central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u32, csize, usize_] {
            self.central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [name_len, 0, 0, 0, 0] {
            self.central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u32, offset] {
            self.central.extend_from_slice(&v.to_le_bytes());
        }
        self.central.extend_from_slice(name.as_bytes());
        self.count += 1;
    }

    fn member(&mut self, name: &str, content: &[u8], deflate: bool) {
        self.member_declaring(name, content, deflate, content.len());
    }

    fn finish(mut self) -> Vec<u8> {
        let (cd_offset, cd_size) = (self.body.len() as u32, self.central.len() as u32);
        self.body.extend_from_slice(&self.central);
        self.body.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        for v in [0u16, 0, self.count, self.count] {
            self.body.extend_from_slice(&v.to_le_bytes());
        }
        for v in [cd_size, cd_offset] {
            self.body.extend_from_slice(&v.to_le_bytes());
        }
        self.body.extend_from_slice(&0u16.to_le_bytes());
        self.body
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
    varint(n << 3 | 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// A `tfplan` (format version 3) with `changes` resource changes of a one-letter address.
fn tfplan(changes: usize) -> Vec<u8> {
    let mut p = Vec::new();
    varint(1 << 3, &mut p);
    varint(3, &mut p);
    let mut rc = Vec::new();
    bytes_field(13, b"a", &mut rc);
    for _ in 0..changes {
        bytes_field(3, &rc, &mut p);
    }
    p
}

const ROOT_MODULE: &[u8] = br#"[{"Key":"","Source":"","Dir":"."}]"#;

fn plan_file(tfplan: &[u8], modules_json: &[u8], config: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut z = Zip::default();
    z.member("tfplan", tfplan, false);
    z.member("tfconfig/modules.json", modules_json, true);
    for (name, content) in config {
        z.member(name, content, true);
    }
    z.finish()
}

#[test]
fn a_crafted_plan_file_is_refused_before_the_reader_holds_more_than_it_allows() {
    let limit = 32 * MB;
    let spaces = vec![b' '; 8 * MB];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "configuration files that inflate to 320 MiB",
            plan_file(
                &tfplan(0),
                ROOT_MODULE,
                &(0..40)
                    .map(|i| (format!("tfconfig/m-/f{i}.tf"), spaces.clone()))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "3 million tiny resource changes",
            plan_file(&tfplan(3_000_000), ROOT_MODULE, &[]),
        ),
        (
            "a module manifest with a huge Version",
            plan_file(
                &tfplan(0),
                format!(
                    r#"[{{"Key":"","Source":"","Dir":".","Version":[{}0]}}]"#,
                    "0,".repeat(12 * MB)
                )
                .as_bytes(),
                &[],
            ),
        ),
        (
            "a module manifest of millions of empty records",
            plan_file(
                &tfplan(0),
                format!("[{}{{}}]", "{},".repeat(8 * MB)).as_bytes(),
                &[],
            ),
        ),
        ("a member that inflates past its declared size", {
            let mut z = Zip::default();
            z.member("tfplan", &tfplan(0), false);
            z.member("tfconfig/modules.json", ROOT_MODULE, true);
            z.member_declaring("tfconfig/m-/big.tf", &vec![b' '; 200 * MB], true, 1024);
            z.finish()
        }),
    ];
    let bound = 3 * limit + 64 * MB;
    let mut over = Vec::new();
    for (what, file) in cases {
        GLOBAL.reset_peak_memory();
        let parsed = PlanFile::parse_within(&file, limit);
        let peak = GLOBAL.get_peak_memory();
        println!(
            "{what}: file {} KB, peak {} MB (bound {} MB), {}",
            file.len() / 1024,
            peak / MB,
            bound / MB,
            match &parsed {
                Ok(p) => format!("read: {} changes", p.changes.len()),
                Err(e) => format!("refused: {e}"),
            }
        );
        if peak > bound {
            over.push(format!("{what}: {peak} B held, bound {bound} B"));
        }
    }
    assert!(over.is_empty(), "{over:#?}");
    // What a refusal says stays short (the inflater's error also holds what it inflated).
    let mut z = Zip::default();
    z.member("tfplan", &tfplan(0), false);
    z.member("tfconfig/modules.json", ROOT_MODULE, true);
    z.member_declaring("tfconfig/m-/big.tf", &vec![b' '; MB], true, 1024);
    let e = PlanFile::parse_within(&z.finish(), limit)
        .unwrap_err()
        .to_string();
    assert!(
        e.len() < 200 && e.contains("inflates past its declared 1024 bytes"),
        "{e}"
    );
}
