//! Namespaces made in-process and links configured over route netlink, checked with
//! iproute2's own view of them: what `netd up` does for each server without an `ip` process.
//!
//! Needs root (CI runs as root). The namespace carries a per-run prefix and a guard deletes
//! it even when an assertion fails.

mod common;

use std::process::Command;

use common::{require_privileges, sh, unique_prefix};
use ipnetwork::IpNetwork;
use netd::kernel::netns;
use netd::kernel::rtnl::Rtnl;
use netd::wire::MacAddr;

/// Deletes the namespace when dropped.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        if netns::exists(&self.0) {
            let _ = netns::delete(&self.0);
        }
    }
}

#[test]
fn a_namespace_made_in_process_is_one_iproute2_sees_and_refuses_twice() {
    require_privileges();
    let ns = Namespace(format!("{}-nl", unique_prefix()));
    netns::create(&ns.0).unwrap();
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&ns.0));
    let (ok, links) = sh(&ns.0, "ip -o link show");
    assert!(ok && links.contains("lo:"), "a fresh namespace: {links}");
    let again = netns::create(&ns.0).unwrap_err().to_string();
    assert!(
        again.contains(&ns.0) && again.contains("File exists"),
        "{again}"
    );
    netns::delete(&ns.0).unwrap();
    assert!(!netns::exists(&ns.0));
    let missing = netns::delete(&ns.0).unwrap_err().to_string();
    assert!(missing.contains(&ns.0), "{missing}");
}

#[test]
fn a_tap_gets_its_identity_over_netlink_and_a_refusal_says_what_and_why() {
    require_privileges();
    let ns = Namespace(format!("{}-nl", unique_prefix()));
    netns::create(&ns.0).unwrap();
    let mac = MacAddr([0x02, 0, 0, 0, 0x4e, 0x01]);
    let v4: IpNetwork = "192.0.2.10/24".parse().unwrap();
    let v6: IpNetwork = "2001:db8::10/64".parse().unwrap();
    let duplicate = netns::run_in(&ns.0, || {
        let tap = netd::kernel::sys::open_tap("eth0", Some(12))?;
        let mut rtnl = Rtnl::open()?;
        let eth0 = rtnl.index_of("eth0").map_err(std::io::Error::other)?;
        let configure = |rtnl: &mut Rtnl| {
            rtnl.set_identity(eth0, mac, 1400)?;
            rtnl.add_address(eth0, v4, false)?;
            rtnl.add_address(eth0, v6, true)?;
            rtnl.set_up(eth0, true)?;
            rtnl.add_default_route(eth0, "192.0.2.1".parse().unwrap())?;
            rtnl.add_default_route(eth0, "2001:db8::1".parse().unwrap())
        };
        configure(&mut rtnl).map_err(std::io::Error::other)?;
        let duplicate = rtnl.add_address(eth0, v4, false).unwrap_err();
        // Persistent, as netd makes them: the device outlives this fd, until its namespace goes.
        netd::kernel::sys::set_persist(&tap, true)?;
        Ok(duplicate)
    })
    .unwrap();
    assert!(
        duplicate.what.contains("address add 192.0.2.10/24"),
        "{duplicate}"
    );
    assert_eq!(duplicate.source.raw_os_error(), Some(libc::EEXIST));

    let (_, link) = sh(&ns.0, "ip -o link show eth0");
    assert!(link.contains("02:00:00:00:4e:01"), "{link}");
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let (_, addrs) = sh(&ns.0, "ip -o addr show dev eth0");
    assert!(addrs.contains("inet 192.0.2.10/24"), "{addrs}");
    assert!(addrs.contains("inet6 2001:db8::10/64"), "{addrs}");
    // EUI-64 from the MAC: the link-local address the switch's guard allows.
    assert!(addrs.contains("fe80::ff:fe00:4e01/64"), "{addrs}");
    let (_, routes) = sh(&ns.0, "ip route; ip -6 route");
    assert!(
        routes.contains("default via 192.0.2.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("default via 2001:db8::1 dev eth0"),
        "{routes}"
    );

    netns::run_in(&ns.0, || {
        let mut rtnl = Rtnl::open()?;
        let eth0 = rtnl.index_of("eth0").map_err(std::io::Error::other)?;
        rtnl.set_up(eth0, false).map_err(std::io::Error::other)?;
        rtnl.flush_addresses(eth0).map_err(std::io::Error::other)
    })
    .unwrap();
    let (_, addrs) = sh(&ns.0, "ip -o addr show dev eth0");
    assert!(!addrs.contains("inet"), "flushed: {addrs}");
    let (_, routes) = sh(&ns.0, "ip route; ip -6 route");
    assert!(
        !routes.contains("default"),
        "the routes went with them: {routes}"
    );
}
