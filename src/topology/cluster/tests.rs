use std::path::Path;

use super::*;
use crate::topology::PortKind;

const LAB: &str = r#"
[hosts.a]
underlay = "192.0.2.1"
capacity = "1gbit"
[hosts.b]
underlay = "192.0.2.2"
capacity = "1gbit"
mtu = 9000
[hosts.c]
underlay = "192.0.2.3"
capacity = "500mbit"

[tenants.acme]
guaranteed = "300mbit"
vni = 1001
[tenants.blue]
guaranteed = "200mbit"
ceiling = "400mbit"

[servers.acme-1]
tenant = "acme"
host = "a"
ip = "10.1.0.1/24"
[servers.acme-2]
tenant = "acme"
host = "b"
ip = "10.1.0.2/24"
[servers.acme-3]
tenant = "acme"
host = "c"
ip = "10.1.0.3/24"
[servers.blue-1]
tenant = "blue"
host = "a"
ip = "10.1.0.1/24"
[servers.blue-2]
tenant = "blue"
host = "b"
ip = "10.1.0.2/24"
"#;

fn lab() -> Cluster {
    parse(Path::new("lab.toml"), LAB).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// The errors of `LAB` with `edits` applied (each replaces one exact line or fragment).
fn errors_with(edits: &[(&str, &str)]) -> Vec<(String, String)> {
    let text = edits.iter().fold(LAB.to_string(), |text, (from, to)| {
        assert!(text.contains(from), "{from:?} not in the fixture");
        text.replacen(from, to, 1)
    });
    let errors = parse(Path::new("lab.toml"), &text).expect_err("should be refused");
    errors
        .into_iter()
        .map(|e| (e.key.clone(), e.kind.to_string()))
        .collect()
}

#[test]
fn a_valid_cluster_keeps_every_host_and_makes_derived_values_explicit() {
    let cluster = lab();
    let names: Vec<_> = cluster.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(cluster.host("b").unwrap().mtu, 9000);
    assert_eq!(cluster.host("a").unwrap().mtu, DEFAULT_UNDERLAY_MTU);
    let stored = cluster.to_toml();
    // The given VNI stays, blue's is derived; MACs and MTUs are written out.
    assert!(stored.contains("vni = 1001"), "{stored}");
    assert_eq!(stored.matches("vni = ").count(), 2, "{stored}");
    assert_eq!(stored.matches("mac = ").count(), 5, "{stored}");
    // The smallest underlay MTU (1500) less VXLAN's 50 bytes.
    assert_eq!(stored.matches("mtu = 1450").count(), 5, "{stored}");
    // What a host reads back is the same cluster.
    let again = parse(Path::new("lab.toml"), &stored).unwrap();
    assert_eq!(again.to_toml(), stored);
    assert_eq!(again.hosts, cluster.hosts);
}

#[test]
fn a_derived_vni_avoids_the_given_ones() {
    let blue = derived_vni("blue", 0);
    let text = LAB.replace("vni = 1001", &format!("vni = {blue}"));
    let cluster = parse(Path::new("lab.toml"), &text).unwrap();
    let a = cluster.view("a", |_| true).unwrap();
    let vnis: Vec<_> = a.tenants.iter().map(|t| t.vni.unwrap()).collect();
    assert_eq!(vnis[0], blue);
    assert_ne!(vnis[1], blue);
    assert!((1..=MAX_VNI).contains(&vnis[1]));
}

#[test]
fn every_cluster_error_is_reported_at_once() {
    let found = errors_with(&[
        ("host = \"c\"", "host = \"z\""),
        ("[tenants.blue]\n", "[tenants.blue]\nvni = 1001\n"),
        ("underlay = \"192.0.2.2\"", "underlay = \"192.0.2.1\""),
        ("underlay = \"192.0.2.3\"", "underlay = \"224.0.0.1\""),
        ("capacity = \"500mbit\"", "capacity = \"100mbit\""),
        ("ceiling = \"400mbit\"", "ceiling = \"2gbit\""),
        ("[servers.blue-2]\n", "[servers.blue-2]\nmtu = 1500\n"),
        (
            "[servers.acme-1]\ntenant = \"acme\"\nhost = \"a\"\n",
            "[servers.acme-1]\ntenant = \"acme\"\n",
        ),
    ]);
    let keys: Vec<_> = found.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "servers.acme-3.host",
        "tenants.blue.vni",
        "hosts.b.underlay",
        "hosts.c.underlay",
        "tenants.blue.ceiling",
        "servers.blue-2.mtu",
        "servers.acme-1.host",
    ] {
        assert!(keys.contains(&key), "{key} missing from {found:#?}");
    }
    let text: Vec<_> = found.iter().map(|(k, m)| format!("{k}: {m}")).collect();
    let text = text.join("\n");
    assert!(text.contains("no such host in [hosts]"), "{text}");
    assert!(
        text.contains("VNI already used by tenant \"acme\""),
        "{text}"
    );
    assert!(
        text.contains("underlay address already used by host \"a\""),
        "{text}"
    );
    assert!(
        text.contains("ceiling is above the capacity 1gbit of host \"a\""),
        "{text}"
    );
    assert!(text.contains("MTU is above 1450"), "{text}");
    assert!(
        text.contains("servers.acme-1.host: required key is missing"),
        "{text}"
    );
}

#[test]
fn the_guarantees_of_each_hosts_tenants_must_fit_that_host() {
    // c runs only acme (300mbit): 250mbit is too little there, though fine for a and b.
    let found = errors_with(&[("capacity = \"500mbit\"", "capacity = \"250mbit\"")]);
    assert_eq!(
        found,
        [(
            "hosts.c.capacity".to_string(),
            "sum of the guarantees of the tenants on host \"c\" is 300mbit, above its capacity 250mbit"
                .to_string()
        )]
    );
}

#[test]
fn the_single_host_rules_hold_across_hosts() {
    let found = errors_with(&[
        ("ip = \"10.1.0.3/24\"", "ip = \"10.1.0.1/24\""),
        ("[tenants.blue]\n", "[tenants.blue]\nweight = 0\n"),
    ]);
    let keys: Vec<_> = found.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["tenants.blue.weight", "servers.acme-3.ip"],
        "{found:#?}"
    );
}

#[test]
fn what_a_single_host_has_is_refused_in_a_cluster() {
    let found = errors_with(&[
        ("vni = 1001", "vni = 1001\ngateway = \"10.1.0.254/24\""),
        (
            "[hosts.a]",
            "[host]\ncapacity = \"1gbit\"\n[uplink]\ninterface = \"eth1\"\ncapacity = \"1gbit\"\n[hosts.a]",
        ),
    ]);
    let keys: Vec<_> = found.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&"tenants.acme.gateway"), "{found:#?}");
    assert!(keys.contains(&"uplink"), "{found:#?}");
    assert!(keys.contains(&"host.capacity"), "{found:#?}");
}

#[test]
fn a_cluster_file_is_refused_as_a_single_host_topology_and_the_reverse() {
    let errors = crate::topology::parse(Path::new("lab.toml"), LAB).unwrap_err();
    assert!(
        errors.iter().any(|e| e.kind == ErrorKind::ClusterFile),
        "{errors:#?}"
    );
    let single = "[host]\ncapacity = \"1gbit\"\n[tenants.t]\nguaranteed = \"1mbit\"\nvni = 5\n\
                  [servers.s]\ntenant = \"t\"\nip = \"10.0.0.1/24\"\nhost = \"a\"\n";
    let errors = crate::topology::parse(Path::new("one.toml"), single).unwrap_err();
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["tenants.t.vni", "servers.s.host"], "{errors:#?}");
}

#[test]
fn a_hosts_view_runs_its_servers_and_sees_its_tenants_servers_elsewhere() {
    let cluster = lab();
    let a = cluster.view("a", |_| true).unwrap();
    assert_eq!(a.capacity, "1gbit".parse().unwrap());
    let local: Vec<_> = a.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(local, ["acme-1", "blue-1"]);
    assert_eq!(a.servers[0].mtu, 1450);
    let view = a.cluster.as_ref().unwrap();
    assert_eq!(view.host.name, "a");
    let peers: Vec<_> = view.peers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(peers, ["b", "c"]);
    let remote: Vec<_> = view
        .remote
        .iter()
        .map(|r| (r.name.as_str(), r.host.as_str(), r.underlay.to_string()))
        .collect();
    assert_eq!(
        remote,
        [
            ("acme-2", "b", "192.0.2.2".to_string()),
            ("acme-3", "c", "192.0.2.3".to_string()),
            ("blue-2", "b", "192.0.2.2".to_string()),
        ]
    );
    // Remote servers are ports of their tenant, after the local ones, with the MACs every
    // host derives alike.
    let b = cluster.view("b", |_| true).unwrap();
    let acme_2 = &b.servers[0];
    assert_eq!(view.remote[0].mac, acme_2.mac);
    assert_eq!(view.remote[0].tenant, a.tenant_by_name("acme").unwrap().id);
    let kinds: Vec<_> = a.ports().map(|p| p.kind()).collect();
    assert_eq!(
        kinds,
        [
            PortKind::Server,
            PortKind::Server,
            PortKind::Remote,
            PortKind::Remote,
            PortKind::Remote
        ]
    );
    assert_eq!(a.port_id_bound(), 5);
}

#[test]
fn a_dead_hosts_servers_leave_the_view_and_a_host_without_servers_runs_empty() {
    let cluster = lab();
    let a = cluster.view("a", |h| h != "b").unwrap();
    let remote: Vec<_> = a
        .cluster
        .as_ref()
        .unwrap()
        .remote
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(remote, ["acme-3"]);
    // c runs only acme: blue is not its tenant, so blue's servers are not its business.
    let c = cluster.view("c", |_| true).unwrap();
    assert_eq!(c.tenants.len(), 1);
    let remote: Vec<_> = c
        .cluster
        .as_ref()
        .unwrap()
        .remote
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(remote, ["acme-1", "acme-2"]);
    let text = LAB.replace(
        "[hosts.c]",
        "[hosts.d]\nunderlay = \"192.0.2.4\"\ncapacity = \"1gbit\"\n[hosts.c]",
    );
    let cluster = parse(Path::new("lab.toml"), &text).unwrap();
    let d = cluster.view("d", |_| true).unwrap();
    assert!(d.tenants.is_empty() && d.servers.is_empty());
    assert!(cluster.view("nowhere", |_| true).is_err());
}

#[test]
fn a_remote_server_keeps_its_port_while_it_stays_on_its_host() {
    let cluster = lab();
    let running = cluster.view("a", |_| true).unwrap();
    // b dies: acme-2 and blue-2 go; acme-3 keeps its port.
    let (mut nt, mut np) = (10, 100);
    let next = cluster
        .view("a", |h| h != "b")
        .unwrap()
        .with_ids_from(&running, &mut nt, &mut np);
    let acme_3 = |t: &Topology| {
        t.cluster
            .as_ref()
            .unwrap()
            .remote
            .iter()
            .find(|r| r.name == "acme-3")
            .unwrap()
            .id
    };
    assert_eq!(acme_3(&next), acme_3(&running));
    // b returns: its servers get fresh ports.
    let back = cluster
        .view("a", |_| true)
        .unwrap()
        .with_ids_from(&next, &mut nt, &mut np);
    let ids: Vec<_> = back
        .cluster
        .as_ref()
        .unwrap()
        .remote
        .iter()
        .map(|r| r.id.0)
        .collect();
    assert_eq!(ids, [100, acme_3(&running).0, 101]);
}

#[test]
fn an_external_hosts_servers_are_reachable_without_a_lease_and_it_runs_nothing() {
    let text = LAB.replace("[hosts.c]\n", "[hosts.c]\nexternal = true\n");
    let cluster = parse(Path::new("lab.toml"), &text).unwrap();
    assert!(cluster.host("c").unwrap().external);
    let a = cluster.view("a", |h| h == "a").unwrap();
    let remote: Vec<_> = a
        .cluster
        .unwrap()
        .remote
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(remote, ["acme-3"], "b has no lease; c needs none");
    assert!(
        cluster.view("c", |_| true).is_err(),
        "no netd runs an external host"
    );
}

#[test]
fn each_hosts_part_of_the_stored_form_gives_the_same_view() {
    let cluster = lab();
    let stored = cluster.to_json();
    assert_eq!(
        from_json(Path::new("etcd"), &stored).unwrap().to_toml(),
        cluster.to_toml()
    );
    for host in ["a", "b", "c"] {
        let part = host_part(Path::new("etcd"), &stored, host).unwrap();
        assert_eq!(part.hosts, cluster.hosts, "every host, for the endpoints");
        let whole = cluster.view(host, |_| true).unwrap();
        let from_part = part.view(host, |_| true).unwrap();
        assert_eq!(from_part.servers, whole.servers, "{host}");
        assert_eq!(from_part.tenants, whole.tenants, "{host}");
        assert_eq!(from_part.cluster, whole.cluster, "{host}");
    }
    // c runs acme only: its part has no blue.
    let c = host_part(Path::new("etcd"), &stored, "c").unwrap();
    assert!(!c.to_toml().contains("blue"));
    assert!(host_part(Path::new("etcd"), "not json", "c").is_err());
}
