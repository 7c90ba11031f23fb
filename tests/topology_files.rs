//! The example topologies under `topology/`: the valid ones load, and `invalid.toml` reports
//! every problem it was written to exhibit, each naming file, key and value.

use std::mem::discriminant;
use std::path::{Path, PathBuf};

use netd::topology::validate::{ErrorKind, NameProblem, ValidationError};
use netd::topology::{LoadError, Rate, TenantId, Topology, load};
use netd::wire::MacAddr;

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("topology")
        .join(name)
}

fn load_ok(name: &str) -> Topology {
    match load(&path(name)) {
        Ok(t) => t,
        Err(e) => panic!("{name} should load: {e}"),
    }
}

fn load_errors(name: &str) -> Vec<ValidationError> {
    match load(&path(name)) {
        Err(LoadError::Invalid(errors)) => errors,
        Err(e) => panic!("{name}: expected validation errors, got {e}"),
        Ok(t) => panic!("{name}: expected validation errors, got {t:#?}"),
    }
}

fn mbit(n: u64) -> Rate {
    Rate::from_bits_per_sec(n * 1_000_000)
}

#[test]
fn demo_loads() {
    let t = load_ok("demo.toml");
    assert_eq!(t.name, "demo");
    assert_eq!(t.capacity, mbit(1000));

    let acme = t.tenant_by_name("acme").unwrap();
    assert_eq!(
        (acme.guaranteed, acme.ceiling, acme.weight),
        (mbit(600), mbit(1000), 2)
    );
    let globex = t.tenant_by_name("globex").unwrap();
    assert_eq!(
        (globex.guaranteed, globex.ceiling, globex.weight),
        (mbit(300), mbit(1000), 1)
    );

    let names: Vec<_> = t.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["acme-db", "acme-web", "globex-db", "globex-web"]);
    let web = t.server_by_name("acme-web").unwrap();
    assert_eq!(web.mac, "02:00:00:00:01:0a".parse::<MacAddr>().unwrap());
    assert_eq!(web.ip.to_string(), "10.1.0.10/24");
    assert_eq!(
        web.ipv6.map(|n| n.to_string()).as_deref(),
        Some("fd00::10/64")
    );
    assert_eq!(
        (web.guaranteed, web.ceiling),
        (Some(mbit(100)), Some(mbit(500)))
    );
    // Overlapping address space across tenants.
    assert_eq!(t.server_by_name("globex-web").unwrap().ip, web.ip);
    for s in &t.servers {
        assert_eq!(s.netns, s.name);
        assert_eq!(s.mtu, 1500);
        assert!(!s.mac.is_multicast() && !s.mac.is_zero());
    }
    assert_eq!(t.servers_of(acme.id).count(), 2);
    assert_eq!(t.servers_of(globex.id).count(), 2);
}

#[test]
fn three_tenants_loads() {
    let t = load_ok("three-tenants.toml");
    assert_eq!(t.name, "three-tenants");
    let guarantees: Vec<_> = t
        .tenants
        .iter()
        .map(|t| (t.name.as_str(), t.guaranteed))
        .collect();
    assert_eq!(
        guarantees,
        [("t1", mbit(500)), ("t2", mbit(300)), ("t3", mbit(200))]
    );
    let total: u64 = t.tenants.iter().map(|t| t.guaranteed.bits_per_sec()).sum();
    assert_eq!(total, t.capacity.bits_per_sec());
    for tenant in &t.tenants {
        assert_eq!((tenant.ceiling, tenant.weight), (mbit(1000), 1));
        assert_eq!(t.servers_of(tenant.id).count(), 2);
    }
    let t2a = t.server_by_name("t2-a").unwrap();
    assert_eq!(t2a.tenant, TenantId(1));
    let macs: std::collections::BTreeSet<_> = t.servers.iter().map(|s| s.mac).collect();
    assert_eq!(macs.len(), 6);
}

#[test]
fn invalid_reports_every_problem() {
    let errors = load_errors("invalid.toml");
    let any = String::new;
    let expected = [
        (
            "servers.acme-web.colour",
            ErrorKind::UnknownKey { expected: any() },
        ),
        (
            "tenants.acme.ceiling",
            ErrorKind::CeilingBelowGuarantee {
                guaranteed: mbit(800),
            },
        ),
        ("tenants.globex.weight", ErrorKind::InvalidWeight),
        ("tenants.initrode.guaranteed", ErrorKind::NonPositiveRate),
        (
            "tenants.umbrella.guaranteed",
            ErrorKind::MalformedRate { reason: any() },
        ),
        (
            "tenants.umbrella.ceiling",
            ErrorKind::CeilingAboveCapacity {
                capacity: mbit(1000),
            },
        ),
        (
            "tenants",
            ErrorKind::GuaranteesExceedCapacity {
                sum: mbit(1200),
                capacity: mbit(1000),
            },
        ),
        (
            "servers.acme-web.ip",
            ErrorKind::DuplicateIp {
                other: "acme-db".into(),
            },
        ),
        (
            "servers.acme-web.mac",
            ErrorKind::DuplicateMac {
                other: "acme-db".into(),
            },
        ),
        (
            "servers.acme-cache.ip",
            ErrorKind::MalformedIp { reason: any() },
        ),
        ("servers.acme-cache.mac", ErrorKind::MulticastMac),
        ("servers.acme-mail.ip", ErrorKind::NetworkAddress),
        ("servers.acme-mail.mac", ErrorKind::ZeroMac),
        ("servers.acme-dns.ip", ErrorKind::BroadcastAddress),
        ("servers.acme-dns.mac", ErrorKind::MalformedMac),
        ("servers.acme-lb.ip", ErrorKind::LoopbackIp),
        ("servers.acme-lb.ipv6", ErrorKind::LinkLocalIpv6),
        ("servers.acme-lb.mtu", ErrorKind::MtuOutOfRange),
        (
            "servers.this-name-is-far-too-long",
            ErrorKind::InvalidName(NameProblem::TooLong { len: 25, max: 15 }),
        ),
        ("servers.ghost.tenant", ErrorKind::UnknownTenant),
        (
            "servers.\"web 1\"",
            ErrorKind::InvalidName(NameProblem::BadChar(' ')),
        ),
        (
            "servers.\"web 1\".netns",
            ErrorKind::InvalidNetns(NameProblem::BadStart('-')),
        ),
        ("servers.\"web 1\".ip", ErrorKind::MissingKey),
        (
            "servers.globex-web.netns",
            ErrorKind::DuplicateNetns {
                other: "acme-web".into(),
            },
        ),
        (
            "servers.globex-web.ceiling",
            ErrorKind::CeilingBelowGuarantee {
                guaranteed: mbit(300),
            },
        ),
        (
            "tenants.globex.guaranteed",
            ErrorKind::ServerGuaranteesExceedTenant { sum: mbit(500) },
        ),
        (
            "servers.globex-db.ceiling",
            ErrorKind::ServerCeilingAboveTenant {
                ceiling: mbit(1000),
            },
        ),
    ];
    for (key, kind) in &expected {
        // Kinds carrying parser wording match by variant, the rest exactly.
        let found = errors.iter().any(|e| {
            e.key == *key
                && match kind {
                    ErrorKind::UnknownKey { .. }
                    | ErrorKind::MalformedRate { .. }
                    | ErrorKind::MalformedIp { .. } => discriminant(&e.kind) == discriminant(kind),
                    _ => e.kind == *kind,
                }
        });
        assert!(found, "missing {key}: {kind:?}\nall errors:\n{errors:#?}");
    }
    assert_eq!(
        errors.len(),
        expected.len(),
        "unexpected extra errors: {errors:#?}"
    );
}

#[test]
fn invalid_errors_name_file_key_and_value() {
    let errors = load_errors("invalid.toml");
    assert!(!errors.is_empty());
    for e in &errors {
        let shown = e.to_string();
        assert!(shown.contains("invalid.toml"), "{shown}");
        assert!(!e.key.is_empty() && shown.contains(&e.key), "{shown}");
        match (&e.value, &e.kind) {
            (Some(value), _) => assert!(shown.contains(value.as_str()), "{shown}"),
            (None, ErrorKind::MissingKey) => {}
            (None, kind) => panic!("{kind:?} without a value: {shown}"),
        }
    }
    // The unknown key also carries its line and column.
    let unknown = errors
        .iter()
        .find(|e| e.key == "servers.acme-web.colour")
        .unwrap();
    assert!(unknown.location.is_some());
    assert!(
        unknown
            .to_string()
            .contains(r#"servers.acme-web.colour = "blue""#)
    );
}

#[test]
fn load_error_lists_every_problem() {
    let err = load(&path("invalid.toml")).unwrap_err();
    let shown = err.to_string();
    let LoadError::Invalid(errors) = &err else {
        panic!("{err}");
    };
    assert!(shown.starts_with(&format!("Invalid topology ({} problems):", errors.len())));
    assert_eq!(shown.lines().count(), errors.len() + 1);
}

#[test]
fn missing_file_is_a_read_error_with_the_os_reason() {
    let err = load(&path("no-such-file.toml")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
}

/// Issue 11: `netd check /dev/zero` grew to 1.3 GB; reading stops at the bound.
#[test]
fn an_endless_or_huge_file_is_refused_at_the_size_bound() {
    let err = load(Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(err, LoadError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("larger than 16777216 bytes"),
        "{err}"
    );
}

#[test]
fn the_outside_demo_loads_with_its_uplink_rates() {
    let t = load_ok("outside.toml");
    let uplink = t.uplink.as_ref().expect("an uplink");
    assert_eq!(
        (uplink.interface.as_str(), uplink.netns.as_deref()),
        ("eth1", Some("demo-edge"))
    );
    assert_eq!(uplink.capacity, mbit(200));
    let acme = t.tenant_by_name("acme").unwrap();
    assert!(acme.nat);
    let up = acme.uplink.as_ref().unwrap();
    assert_eq!(
        (up.guaranteed, up.ceiling, up.weight),
        (mbit(50), mbit(200), 2)
    );
    let globex = t.tenant_by_name("globex").unwrap();
    assert!(!globex.nat);
    assert_eq!(globex.uplink.as_ref().unwrap().guaranteed, mbit(100));
    assert!(t.server_by_name("acme-db").unwrap().dhcp);
}

#[test]
fn the_cluster_example_validates_and_each_host_sees_its_part() {
    let netd::topology::AnyTopology::Cluster(cluster) =
        netd::topology::load_any(&path("cluster.toml")).expect("valid")
    else {
        panic!("cluster.toml is a cluster topology");
    };
    assert_eq!(cluster.hosts.len(), 3);
    let c = cluster.view("c", |_| true).expect("c's part");
    assert_eq!(c.servers.len(), 1);
    let remote: Vec<_> = c
        .cluster
        .unwrap()
        .remote
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(remote, ["acme-a", "acme-b"]);
    // Run as one host's file, it is refused with what to do instead.
    let errors = load_errors("cluster.toml");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("netd push"), "{}", errors[0]);
}
