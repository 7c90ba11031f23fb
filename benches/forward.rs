//! Criterion: `Switch::decide` per frame (anti-spoof guard + forwarding lookup), ns/frame.
//!
//! Frames: an ARP request (broadcast: flood), an IPv4/UDP and an IPv6/UDP unicast to another
//! port of the sender's tenant, all valid for the ingress port (so the guard checks every
//! rule and the lookup runs). Topologies of 10 and 1000 ports, tenants of 10 ports each; the
//! frames come from the last tenant, so a lookup keyed by tenant pays its full cost.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use netd::switch::{Decision, Switch};
use netd::topology::{PortId, Topology};

/// Generate a topology of `n` servers in tenants of 10 (`s{i}`, MAC 02:00:00:00:hi:lo).
fn topology(n: usize) -> Topology {
    let tenants = n.div_ceil(10);
    let mut toml = String::from("[host]\ncapacity = \"100gbit\"\n");
    for k in 0..tenants {
        toml += &format!(
            "[tenants.g{k}]\nguaranteed = \"{}mbit\"\n",
            100_000 / tenants
        );
    }
    for i in 0..n {
        let j = i % 10 + 1;
        toml += &format!(
            "[servers.s{i}]\ntenant = \"g{}\"\nip = \"10.0.0.{j}/24\"\nipv6 = \"fd00::{j}/64\"\n\
             mac = \"02:00:00:00:{:02x}:{:02x}\"\n",
            i / 10,
            i >> 8,
            i & 0xff
        );
    }
    netd::topology::parse(Path::new("bench.toml"), &toml).expect("valid bench topology")
}

fn mac(i: usize) -> [u8; 6] {
    let b = u16::try_from(i).expect("at most 65535 ports").to_be_bytes();
    [2, 0, 0, 0, b[0], b[1]]
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Return (name, frame) from port `from` (IP 10.0.0.a) to port `to` (10.0.0.b).
fn frames(from: usize, to: usize) -> Vec<(&'static str, Vec<u8>)> {
    let host = |i: usize| u8::try_from(i % 10 + 1).unwrap_or(1);
    let (a, b) = (host(from), host(to));
    let udp = [0x30, 0x39, 0x00, 0x35, 0x00, 0x1a, 0, 0];
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&mac(from));
    arp.extend_from_slice(&[10, 0, 0, a]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 0, 0, b]);
    let mut v4 = vec![
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, a, 10, 0, 0, b,
    ];
    v4.extend_from_slice(&udp);
    v4.extend_from_slice(&[0; 18]);
    let mut v6 = vec![0x60, 0, 0, 0, 0, 26, 17, 64];
    v6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, a]);
    v6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b]);
    v6.extend_from_slice(&udp);
    v6.extend_from_slice(&[0; 18]);
    vec![
        ("arp_request", ethernet([0xff; 6], mac(from), 0x0806, &arp)),
        ("ipv4_udp", ethernet(mac(to), mac(from), 0x0800, &v4)),
        ("ipv6_udp", ethernet(mac(to), mac(from), 0x86dd, &v6)),
    ]
}

fn bench(c: &mut Criterion) {
    for n in [10, 1000] {
        let switch = Switch::new(&topology(n));
        let (from, to) = (n - 2, n - 1);
        let mut group = c.benchmark_group(format!("decide/{n}_ports"));
        group.throughput(Throughput::Elements(1));
        for (name, frame) in frames(from, to) {
            let ingress = PortId(u32::try_from(from).expect("small port index"));
            // The frame must pass the guard, or this measures an early drop.
            let d = switch.decide(ingress, &frame);
            assert!(
                !matches!(d, Decision::Drop(_)),
                "{name} frame dropped: {d:?}"
            );
            group.bench_function(name, |b| {
                b.iter(|| switch.decide(black_box(ingress), black_box(&frame)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
