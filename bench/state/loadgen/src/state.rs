//! Synthetic but realistic Terraform state v4 documents: pretty-printed like Terraform writes
//! them, with ~1 KB resource instances whose ids, ARNs and hashes come from a seeded PRNG (so
//! they compress like real ones, not like repeated text). A "version" bumps the serial and
//! rewrites exactly one instance, as a small apply does.

use std::fmt::Write as _;

/// splitmix64: small, deterministic, good enough for benchmark data.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` lowercase hex digits.
    pub fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n + 16);
        while s.len() < n {
            let _ = write!(s, "{:016x}", self.next());
        }
        s.truncate(n);
        s
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A UUID-shaped string.
    pub fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }
}

const TYPES: &[&str] = &[
    "aws_instance",
    "aws_network_interface",
    "aws_security_group_rule",
    "aws_iam_role_policy",
    "aws_lb_target_group",
    "aws_route",
    "aws_cloudwatch_metric_alarm",
    "aws_ssm_parameter",
];
const ZONES: &[&str] = &["eu-west-1a", "eu-west-1b", "eu-west-1c"];
const SIZES: &[&str] = &["t3.small", "t3.medium", "m6i.large", "c6i.xlarge"];

struct Resource {
    resource_type: &'static str,
    name: String,
    /// Index of its first instance in `StateDoc::instances`.
    first: usize,
    count: usize,
}

/// A state document kept as parts, so a new version is cheap to assemble.
pub struct StateDoc {
    lineage: String,
    resources: Vec<Resource>,
    instances: Vec<String>,
    rng: Rng,
    /// Serial of the next [`StateDoc::next_version`].
    pub serial: u64,
}

impl StateDoc {
    /// A document of at least `target_bytes` bytes (serialized), seeded by `seed`.
    pub fn generate(target_bytes: usize, seed: u64) -> StateDoc {
        let mut rng = Rng::new(seed);
        let lineage = rng.uuid();
        let mut doc = StateDoc {
            lineage,
            resources: Vec::new(),
            instances: Vec::new(),
            rng: Rng::new(seed ^ 0x5eed),
            serial: 1,
        };
        let mut size = 200;
        while size < target_bytes {
            let resource_type = TYPES[rng.below(TYPES.len() as u64) as usize];
            let count = 1 + rng.below(8) as usize;
            let r = Resource {
                resource_type,
                name: format!("r{}", doc.resources.len()),
                first: doc.instances.len(),
                count,
            };
            size += 200;
            for i in 0..count {
                let text = instance_json(&mut rng, &r, i, 0);
                size += text.len() + 2;
                doc.instances.push(text);
            }
            doc.resources.push(r);
        }
        doc
    }

    /// Number of resource instances.
    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// The stack's lineage.
    pub fn lineage(&self) -> &str {
        &self.lineage
    }

    /// Rewrites instance `which` (its tags and content hash change, as after an in-place
    /// update).
    pub fn change_instance(&mut self, which: usize, revision: u64) {
        let idx = which % self.instances.len().max(1);
        let Some(r) = self
            .resources
            .iter()
            .find(|r| r.first <= idx && idx < r.first + r.count)
        else {
            return;
        };
        let mut rng = Rng::new(self.rng.next());
        let text = instance_json(&mut rng, r, idx - r.first, revision);
        if let Some(slot) = self.instances.get_mut(idx) {
            *slot = text;
        }
    }

    /// Serializes the document with the current serial into `out`.
    pub fn render(&self, out: &mut Vec<u8>) {
        out.clear();
        let _ = write!(
            VecWriter(out),
            "{{\n  \"version\": 4,\n  \"terraform_version\": \"1.11.4\",\n  \"serial\": {},\n  \"lineage\": \"{}\",\n  \"outputs\": {{\n    \"instance_count\": {{\n      \"value\": {},\n      \"type\": \"number\"\n    }}\n  }},\n  \"resources\": [\n",
            self.serial,
            self.lineage,
            self.instances.len()
        );
        for (ri, r) in self.resources.iter().enumerate() {
            let _ = write!(
                VecWriter(out),
                "    {{\n      \"mode\": \"managed\",\n      \"type\": \"{}\",\n      \"name\": \"{}\",\n      \"provider\": \"provider[\\\"registry.terraform.io/hashicorp/aws\\\"]\",\n      \"instances\": [\n",
                r.resource_type, r.name
            );
            for i in 0..r.count {
                if let Some(text) = self.instances.get(r.first + i) {
                    out.extend_from_slice(text.as_bytes());
                }
                out.extend_from_slice(if i + 1 < r.count { b",\n" } else { b"\n" });
            }
            out.extend_from_slice(b"      ]\n    }");
            out.extend_from_slice(if ri + 1 < self.resources.len() {
                b",\n"
            } else {
                b"\n"
            });
        }
        out.extend_from_slice(b"  ],\n  \"check_results\": null\n}\n");
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// One instance object, ~1 KB, indented as Terraform indents it inside `resources`.
fn instance_json(rng: &mut Rng, r: &Resource, index: usize, revision: u64) -> String {
    let id = format!("i-{}", rng.hex(17));
    let account = "123456789012";
    let zone = ZONES[rng.below(ZONES.len() as u64) as usize];
    let size = SIZES[rng.below(SIZES.len() as u64) as usize];
    let ip = format!(
        "10.{}.{}.{}",
        rng.below(256),
        rng.below(256),
        1 + rng.below(254)
    );
    let private = {
        // Terraform's `private` is base64 of provider JSON; random bytes look the same.
        use base64::Engine;
        let bytes: Vec<u8> = (0..48).map(|_| rng.next() as u8).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    format!(
        r#"        {{
          "index_key": {index},
          "schema_version": 1,
          "attributes": {{
            "ami": "ami-{ami}",
            "arn": "arn:aws:ec2:eu-west-1:{account}:{rt}/{id}",
            "availability_zone": "{zone}",
            "id": "{id}",
            "instance_type": "{size}",
            "private_ip": "{ip}",
            "root_block_device": [
              {{
                "encrypted": true,
                "volume_id": "vol-{vol}",
                "volume_size": {gb}
              }}
            ],
            "subnet_id": "subnet-{subnet}",
            "tags": {{
              "Name": "{name}-{index}",
              "revision": "{revision}",
              "team": "platform"
            }},
            "user_data": "{user_data}",
            "vpc_security_group_ids": [
              "sg-{sg}"
            ]
          }},
          "sensitive_attributes": [],
          "private": "{private}",
          "dependencies": [
            "aws_subnet.main"
          ]
        }}"#,
        ami = rng.hex(17),
        rt = r.resource_type,
        vol = rng.hex(17),
        gb = 20 + rng.below(200),
        subnet = rng.hex(17),
        name = r.name,
        user_data = rng.hex(40),
        sg = rng.hex(17),
    )
}

/// Terraform-style lock info for lock `id`.
pub fn lock_info(id: &str, who: &str) -> String {
    format!(
        "{{\"ID\":\"{id}\",\"Operation\":\"OperationTypeApply\",\"Info\":\"\",\"Who\":\"{who}\",\"Version\":\"1.11.4\",\"Created\":\"2026-11-24T00:00:00.000000000Z\",\"Path\":\"\"}}"
    )
}
