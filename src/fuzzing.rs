//! Entry points for coverage-guided fuzzing (`fuzz/`, cargo-fuzz) and for the corpus replay
//! that CI runs on stable (`tests/fuzz_corpora.rs`): each takes arbitrary bytes, runs one
//! parser of hostile input, and panics only when a contract breaks.
//!
//! - [`frame`]: a frame (after a selector byte: ingress port, virtio-net header or not) as
//!   a server's TAP would hand it: the header parse, the switch's guard and forward
//!   decision, the offload conversions and the flow hash. Checked: never a panic; a
//!   forwarded frame stays in the ingress port's tenant and never goes back to it.
//! - [`topology`]: a topology file: parse and validate; a valid one must survive a round
//!   trip through its file form unchanged.
//! - [`request`]: a control-socket line and an HTTP change body; a change that parses is
//!   proposed against a running topology (the full validation of live changes).

use std::path::Path;
use std::sync::OnceLock;

use crate::control::{Request, change, http};
use crate::switch::{Decision, Switch};
use crate::topology::{self, PortId, Topology};
use crate::wire::vnet::{VNET_HDR_LEN, VnetHeader};

/// The topology every fuzzed frame and change meets: two tenants with overlapping
/// addresses, one with a gateway, one server with IPv6, one with jumbo frames.
const TOPOLOGY: &str = r#"
[host]
capacity = "10gbit"
[tenants.acme]
guaranteed = "1gbit"
gateway = "10.0.0.254/24"
dns = ["192.0.2.53"]
[tenants.blue]
guaranteed = "1gbit"
[servers.a1]
tenant = "acme"
ip = "10.0.0.1/24"
ipv6 = "fd00::1/64"
mac = "02:00:00:00:00:01"
[servers.a2]
tenant = "acme"
ip = "10.0.0.2/24"
mac = "02:00:00:00:00:02"
dhcp = true
[servers.b1]
tenant = "blue"
ip = "10.0.0.1/24"
mac = "02:00:00:00:01:01"
[servers.b2]
tenant = "blue"
ip = "10.0.0.2/24"
mac = "02:00:00:00:01:02"
mtu = 9000
"#;

fn fixture() -> &'static (Topology, Switch) {
    static FIXTURE: OnceLock<(Topology, Switch)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let topology = topology::parse(Path::new("fuzz.toml"), TOPOLOGY).expect("fixture");
        let switch = Switch::new(&topology);
        (topology, switch)
    })
}

/// Fuzz one frame from a port. Byte 0: ingress port (low 3 bits, some unknown) and whether
/// a virtio-net header precedes the frame (bit 3).
pub fn frame(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (_, switch) = fixture();
    let ingress = PortId(u32::from(selector & 0x07));
    let (header, frame) = if selector & 0x08 != 0 {
        match (VnetHeader::parse(rest), rest.get(VNET_HDR_LEN..)) {
            (Some(header), Some(frame)) => (header, frame),
            _ => return, // dropped as malformed by the data path
        }
    } else {
        (VnetHeader::default(), rest)
    };
    let decision = if header.is_gso() {
        switch.decide_gso(ingress, frame)
    } else {
        switch.decide(ingress, frame)
    };
    let tenant = switch.tenant_of(ingress);
    match decision {
        Decision::Unicast(to_tenant, port) => {
            assert_eq!(Some(to_tenant), tenant, "unicast named another tenant");
            assert_eq!(switch.tenant_of(port), tenant, "unicast crossed tenants");
            assert_ne!(port, ingress, "unicast back to the ingress");
        }
        Decision::Flood(to_tenant) => assert_eq!(Some(to_tenant), tenant, "flood crossed tenants"),
        Decision::Drop(_) => {}
    }
    // What the data path computes for every forwarded frame must not panic either.
    let _ = header.wire_bytes(frame);
    let _ = header.largest_segment(frame);
    let _ = crate::wire::flow::flow_hash(frame);
    let mut copy = frame.to_vec();
    let _ = header.complete_checksum(&mut copy);
}

/// Fuzz a topology file.
pub fn topology(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(topology) = topology::parse(Path::new("fuzz.toml"), &text) else {
        return;
    };
    let written = toml::to_string(&topology.to_file()).expect("a valid topology serialises");
    let again = topology::parse(Path::new("fuzz.toml"), &written)
        .unwrap_or_else(|e| panic!("its own file form does not validate: {e:?}\n{written}"));
    assert_eq!(
        again.tenants, topology.tenants,
        "tenants changed in a round trip"
    );
    assert_eq!(
        again.servers, topology.servers,
        "servers changed in a round trip"
    );
}

/// Fuzz control requests: byte 0 picks the HTTP change kind; the rest is both a socket line
/// and an HTTP body.
pub fn request(data: &[u8]) {
    const KINDS: [&str; 6] = [
        "set-rate",
        "add-tenant",
        "remove-tenant",
        "add-server",
        "remove-server",
        "explode",
    ];
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (running, _) = fixture();
    let mut changes = Vec::new();
    if let Ok(Request::Apply { change }) = serde_json::from_slice::<Request>(body) {
        changes.push(*change);
    }
    let kind = KINDS[usize::from(selector) % KINDS.len()];
    if let Ok(change) = http::parse_change(kind, body) {
        changes.push(change);
    }
    for change in changes {
        let (mut next_tenant, mut next_port) = (100, 100);
        if let Ok(new) = change::propose(running, &change, &mut next_tenant, &mut next_port) {
            // A change that validates leads to a topology the switch can be built from.
            let _ = Switch::new(&new);
            let _ = change::Diff::between(running, &new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::fixtures::ALL;

    /// Write the seed corpora (`cargo test --lib write_seed_corpora -- --ignored`): every
    /// switch fixture from a1 with and without a virtio-net header, the bundled topologies,
    /// and one request of each kind.
    #[test]
    #[ignore = "writes fuzz/corpus; run by hand"]
    fn write_seed_corpora() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        for (name, frame) in ALL {
            write(
                "frame",
                &format!("{name}-plain"),
                &[&[0u8][..], frame].concat(),
            );
            let header = [0u8; VNET_HDR_LEN];
            write(
                "frame",
                &format!("{name}-vnet"),
                &[&[0x08u8][..], &header, frame].concat(),
            );
        }
        for file in ["demo", "three-tenants", "invalid"] {
            let text = std::fs::read(format!(
                "{}/topology/{file}.toml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            write("topology", file, &text);
        }
        write("topology", "fuzz-fixture", TOPOLOGY.as_bytes());
        let requests: [(&str, u8, &str); 6] = [
            (
                "set-rate",
                0,
                r#"{"tenant":"acme","guaranteed":"200mbit","weight":2}"#,
            ),
            (
                "add-tenant",
                1,
                r#"{"name":"new","tenant":{"guaranteed":"10mbit","gateway":"10.9.0.1/24"}}"#,
            ),
            ("remove-tenant", 2, r#"{"name":"blue"}"#),
            (
                "add-server",
                3,
                r#"{"name":"s9","server":{"tenant":"acme","ip":"10.0.0.9/24","dhcp":true}}"#,
            ),
            ("remove-server", 4, r#"{"name":"a2"}"#),
            (
                "socket-apply",
                0,
                r#"{"cmd":"apply","change":{"change":"set-rate","tenant":"blue","ceiling":"2gbit"}}"#,
            ),
        ];
        for (name, kind, body) in requests {
            write("request", name, &[&[kind][..], body.as_bytes()].concat());
        }
    }

    #[test]
    fn the_seeds_pass_every_entry_point() {
        for (_, f) in ALL {
            frame(&[&[0u8][..], f].concat());
            frame(&[&[0x09u8][..], &[0u8; VNET_HDR_LEN], f].concat());
        }
        topology(TOPOLOGY.as_bytes());
        // Kind 0 (set-rate) and a change that validates.
        request(b"\x00{\"tenant\":\"acme\",\"guaranteed\":\"200mbit\"}");
    }
}
