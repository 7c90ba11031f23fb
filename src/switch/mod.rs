//! Switch: the pure per-frame decision of an isolated, multi-tenant L2 switch.
//!
//! Contract:
//! - [`Switch::decide`] never panics and never allocates, whatever the bytes and whatever
//!   the ingress port; it does no I/O and keeps no state, so one `Switch` can serve every
//!   data-path thread at once.
//! - Nothing crosses tenants: a frame from a tenant's port is delivered, flooded or dropped
//!   within that tenant only.
//! - Every drop names its [`DropReason`], for the data path to count.
//!
//! A decision is `guard` (anti-spoofing: every source address in the frame is the port's
//! own) then `forward` (the tenant's static MAC table; group addresses flood the tenant).
//! The switch is immutable and built whole from a [`Topology`]; the control plane replaces
//! it whole when the topology changes. Port ids need not be dense (a running daemon keeps
//! ids stable while servers come and go): a missing id is simply an unknown port.

mod forward;
mod guard;

#[cfg(test)]
pub(crate) mod fixtures;

use crate::stats::DropReason;
use crate::topology::{PortId, PortKind, TenantId, Topology};
use crate::wire::MacAddr;
use crate::wire::vnet::GSO_MAX_FRAME;

use forward::ForwardTable;
use guard::PortFacts;

/// The decision for one frame. A forwarded frame names the tenant it belongs to: the one
/// to charge, and the only one whose ports it may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it to this port (always another port of the tenant, of any kind).
    Unicast(TenantId, PortId),
    /// Send a copy to every port of this tenant except the ingress.
    Flood(TenantId),
    /// Drop it and count the reason.
    Drop(DropReason),
}

/// An immutable switch: per-port facts for the guard and per-tenant tables for forwarding.
#[derive(Clone, Debug)]
pub struct Switch {
    /// Indexed by `PortId`; `None` for ids without a port.
    ports: Box<[Option<PortFacts>]>,
    /// Storm control: broadcast/multicast frames/s allowed from each port (by `PortId`).
    broadcast_pps: Box<[u32]>,
    table: ForwardTable,
}

impl Switch {
    /// Build the switch for every port of `topology`, of whatever kind.
    pub fn new(topology: &Topology) -> Switch {
        let bound = topology.port_id_bound();
        let mut ports = vec![None; bound];
        let mut broadcast_pps = vec![0; bound];
        for port in topology.ports() {
            ports[port.id().index()] = Some(PortFacts::new(port));
            broadcast_pps[port.id().index()] = topology.tenant(port.tenant()).broadcast_pps;
        }
        Switch {
            ports: ports.into(),
            broadcast_pps: broadcast_pps.into(),
            table: ForwardTable::new(topology),
        }
    }

    /// Decide what to do with one frame read from `ingress`.
    ///
    /// A port this switch does not know (say, one removed by a topology change while its
    /// frame was in flight) owns no address, so its frames drop as `SpoofedMac`.
    pub fn decide(&self, ingress: PortId, frame: &[u8]) -> Decision {
        let Some(port) = self.facts(ingress) else {
            return Decision::Drop(DropReason::SpoofedMac);
        };
        Self::verdict(&self.table, ingress, port, guard::check(port, frame))
    }

    /// [`Switch::decide`] for a frame the kernel marked as a GSO super-frame: it may be up to
    /// [`GSO_MAX_FRAME`] bytes long; every other rule is the same.
    pub fn decide_gso(&self, ingress: PortId, frame: &[u8]) -> Decision {
        let Some(port) = self.facts(ingress) else {
            return Decision::Drop(DropReason::SpoofedMac);
        };
        let checked = guard::check_with_limit(port, frame, GSO_MAX_FRAME);
        Self::verdict(&self.table, ingress, port, checked)
    }

    fn facts(&self, port: PortId) -> Option<&PortFacts> {
        self.ports.get(port.index()).and_then(Option::as_ref)
    }

    fn verdict(
        table: &ForwardTable,
        ingress: PortId,
        port: &PortFacts,
        checked: Result<crate::wire::EthernetFrame<&[u8]>, DropReason>,
    ) -> Decision {
        match checked {
            Ok(eth) => table.decide(ingress, port.kind, port.tenant, &eth),
            Err(reason) => Decision::Drop(reason),
        }
    }

    /// Return all ports of a tenant, in port order (the caller skips the ingress port when
    /// flooding); empty for a tenant without servers or unknown to this switch.
    pub fn tenant_ports(&self, tenant: TenantId) -> &[PortId] {
        self.table.members(tenant)
    }

    /// Return the ports a flood of `tenant` from `ingress` reaches, in port order (the
    /// caller skips the ingress itself): all of [`Switch::tenant_ports`], or this host's
    /// own only for a flood that came over the tunnel.
    pub fn flood_ports(&self, tenant: TenantId, ingress: PortId) -> &[PortId] {
        let kind = self.kind_of(ingress).unwrap_or(PortKind::Server);
        self.table.flood_members(tenant, kind)
    }

    /// Return the tenant a port serves (`None` for a port this switch does not know).
    pub fn tenant_of(&self, port: PortId) -> Option<TenantId> {
        self.facts(port).map(|facts| facts.tenant)
    }

    /// Return a port's kind (`None` for a port this switch does not know).
    pub fn kind_of(&self, port: PortId) -> Option<PortKind> {
        self.facts(port).map(|facts| facts.kind)
    }

    /// Return one more than the largest port id; every port id is below it.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Return the MAC a port's frames come from (`None` for a port this switch does not know):
    /// the one a frame routed to a server must carry.
    pub fn mac_of(&self, port: PortId) -> Option<MacAddr> {
        self.facts(port).map(|facts| facts.mac)
    }

    /// Return the longest frame a port takes, Ethernet header included (`None`: no such port).
    pub fn max_frame_len(&self, port: PortId) -> Option<usize> {
        self.facts(port).map(|facts| facts.max_frame_len)
    }

    /// Return the storm-control limit of a port: broadcast/multicast frames per second (0 for
    /// an unknown port).
    pub fn broadcast_pps(&self, port: PortId) -> u32 {
        self.broadcast_pps.get(port.index()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use proptest::sample::Index;
    use rstest::rstest;

    use super::fixtures::*;
    use super::*;
    use Decision::{Flood, Unicast};
    use DropReason::*;

    static SWITCH: LazyLock<Switch> = LazyLock::new(|| Switch::new(&topology()));

    /// Re-address a fixture from `a1` as sent by `src` to `dst` (the ARP sender MAC too).
    fn readdressed(frame: &[u8], src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
        let frame = patched(frame, at::ETH_SRC, &src);
        let frame = patched(&frame, at::ETH_DST, &dst);
        if frame[at::ETHERTYPE..at::ETHERTYPE + 2] == [0x08, 0x06] {
            patched(&frame, at::ARP_SHA, &src)
        } else if frame.get(at::UDP_DST..at::UDP_DST + 2) == Some(&[0, 67]) {
            // A DHCP request names its sender as the client.
            patched(&frame, at::DHCP_CHADDR, &src)
        } else {
            frame
        }
    }

    /// Assert the isolation contract for one decision.
    fn assert_isolated(ingress: PortId, decision: Decision) {
        if ingress.index() >= SWITCH.port_count() {
            assert_eq!(decision, Decision::Drop(SpoofedMac));
            return;
        }
        let tenant = SWITCH.tenant_of(ingress).expect("a known port");
        match decision {
            Unicast(to, port) => {
                assert_ne!(port, ingress, "unicast back to the ingress");
                assert_eq!(to, tenant, "unicast named another tenant");
                assert_eq!(
                    SWITCH.tenant_of(port),
                    Some(tenant),
                    "unicast crossed tenants"
                );
            }
            Flood(flooded) => assert_eq!(flooded, tenant, "flood crossed tenants"),
            Decision::Drop(_) => {}
        }
    }

    #[test]
    fn ports_and_tenants_come_from_the_topology() {
        assert_eq!(SWITCH.port_count(), 4);
        assert_eq!(
            [A1, A2, B1, B2].map(|p| SWITCH.tenant_of(p)),
            [ACME, ACME, BLUE, BLUE].map(Some)
        );
        assert_eq!(SWITCH.kind_of(A1), Some(PortKind::Server));
        assert_eq!(SWITCH.tenant_ports(ACME), [A1, A2]);
        assert_eq!(SWITCH.tenant_ports(BLUE), [B1, B2]);
        assert_eq!(SWITCH.tenant_ports(IDLE), []);
        assert_eq!(SWITCH.tenant_ports(TenantId(42)), []);
    }

    #[test]
    fn an_unknown_port_has_no_tenant_or_kind() {
        assert_eq!(SWITCH.tenant_of(PortId(4)), None);
        assert_eq!(SWITCH.kind_of(PortId(u32::MAX)), None);
    }

    #[rstest]
    #[case::arp_request(&ARP_REQUEST, Flood(ACME))]
    #[case::arp_reply(&ARP_REPLY, Unicast(ACME, A2))]
    #[case::arp_probe(&ARP_PROBE, Flood(ACME))]
    #[case::ipv4_icmp(&IPV4_ICMP, Unicast(ACME, A2))]
    #[case::ipv4_udp(&IPV4_UDP, Unicast(ACME, A2))]
    #[case::ipv4_tcp(&IPV4_TCP, Unicast(ACME, A2))]
    #[case::dhcp_discover(&DHCP_DISCOVER, Flood(ACME))]
    #[case::nd_solicitation(&NDP_NS, Flood(ACME))]
    #[case::nd_advertisement(&NDP_NA, Unicast(ACME, A2))]
    #[case::ipv6_global_icmp(&IPV6_GLOBAL, Unicast(ACME, A2))]
    #[case::ipv6_global_udp(&IPV6_GLOBAL_UDP, Unicast(ACME, A2))]
    #[case::dad(&DAD_NS, Flood(ACME))]
    #[case::mld_report(&MLD_REPORT_DAD, Flood(ACME))]
    #[case::router_solicitation(&ROUTER_SOLICIT, Flood(ACME))]
    #[case::router_advertisement(&ROUTER_ADVERT, Decision::Drop(SpoofedIpv6))]
    fn decides_each_fixture_from_its_port(#[case] frame: &[u8], #[case] expected: Decision) {
        assert_eq!(SWITCH.decide(A1, frame), expected);
    }

    #[rstest]
    fn every_fixture_from_another_port_is_spoofed(
        #[values(A2, B1, B2, PortId(4), PortId(u32::MAX))] ingress: PortId,
    ) {
        for (name, frame) in ALL {
            assert_eq!(
                SWITCH.decide(ingress, frame),
                Decision::Drop(SpoofedMac),
                "{name}"
            );
        }
    }

    #[test]
    fn tenants_with_overlapping_ips_each_forward_correctly() {
        // a1/b1 are both 10.0.0.1 and fd00::1, a2/b2 both 10.0.0.2; only the MACs differ.
        for frame in [
            &IPV4_ICMP[..],
            &IPV4_UDP,
            &IPV4_TCP,
            &ARP_REPLY,
            &IPV6_GLOBAL,
        ] {
            let acme = readdressed(frame, A1_MAC, A2_MAC);
            assert_eq!(SWITCH.decide(A1, &acme), Unicast(ACME, A2));
            let blue = readdressed(frame, B1_MAC, B2_MAC);
            assert_eq!(SWITCH.decide(B1, &blue), Unicast(BLUE, B2));
            let acme_to_blue = readdressed(frame, A1_MAC, B2_MAC);
            assert_eq!(
                SWITCH.decide(A1, &acme_to_blue),
                Decision::Drop(UnknownDestination)
            );
            let blue_to_acme = readdressed(frame, B1_MAC, A2_MAC);
            assert_eq!(
                SWITCH.decide(B1, &blue_to_acme),
                Decision::Drop(UnknownDestination)
            );
        }
        // (NDP_NS carries a1's link-local source and SLLA, so it is not b1's to send.)
        for frame in [&ARP_REQUEST[..], &DHCP_DISCOVER, &DAD_NS] {
            let dst = frame[at::ETH_DST..at::ETH_DST + 6].try_into().unwrap();
            assert_eq!(
                SWITCH.decide(B1, &readdressed(frame, B1_MAC, dst)),
                Flood(BLUE)
            );
        }
    }

    #[test]
    fn hairpin_and_unknown_destinations_drop() {
        let hairpin = readdressed(&IPV4_UDP, A1_MAC, A1_MAC);
        assert_eq!(SWITCH.decide(A1, &hairpin), Decision::Drop(Hairpin));
        let unknown = readdressed(&IPV4_UDP, A1_MAC, [2, 0, 0, 0, 0, 0x99]);
        assert_eq!(
            SWITCH.decide(A1, &unknown),
            Decision::Drop(UnknownDestination)
        );
    }

    #[test]
    fn multicast_floods_the_senders_tenant() {
        for dst in [[0x33, 0x33, 0, 0, 0, 0xfb], [0x01, 0x00, 0x5e, 0, 0, 0xfb]] {
            assert_eq!(
                SWITCH.decide(A1, &readdressed(&IPV4_UDP, A1_MAC, dst)),
                Flood(ACME)
            );
            assert_eq!(
                SWITCH.decide(B1, &readdressed(&ARP_REQUEST, B1_MAC, dst)),
                Flood(BLUE)
            );
        }
    }

    #[test]
    fn oversized_frames_drop() {
        let mut frame = IPV4_UDP.to_vec();
        frame.resize(1515, 0);
        assert_eq!(SWITCH.decide(A1, &frame), Decision::Drop(Oversized));
        assert_eq!(SWITCH.decide(A1, &[0; 65536]), Decision::Drop(Oversized));
    }

    #[test]
    fn every_truncation_of_every_fixture_is_truncated() {
        for (name, frame) in ALL {
            for len in 0..frame.len() {
                for ingress in (0..6).map(PortId) {
                    let decision = SWITCH.decide(ingress, &frame[..len]);
                    assert_isolated(ingress, decision);
                }
                assert_eq!(
                    SWITCH.decide(A1, &frame[..len]),
                    Decision::Drop(Truncated),
                    "{name}[..{len}]"
                );
            }
        }
    }

    #[test]
    fn every_single_byte_corruption_is_decided_within_the_tenant() {
        for (_, frame) in ALL {
            let mut corrupt = frame.to_vec();
            for at in 0..frame.len() {
                for value in 0..=u8::MAX {
                    corrupt[at] = value;
                    assert_isolated(A1, SWITCH.decide(A1, &corrupt));
                }
                corrupt[at] = frame[at];
            }
        }
    }

    proptest! {
        #[test]
        fn decide_never_panics_on_random_bytes(
            ingress in 0u32..6,
            frame in prop::collection::vec(any::<u8>(), 0..1600),
        ) {
            assert_isolated(PortId(ingress), SWITCH.decide(PortId(ingress), &frame));
        }

        #[test]
        fn decide_never_panics_past_a_valid_ethernet_header(
            ethertype in prop::sample::select(vec![[0x08, 0x00], [0x08, 0x06], [0x86, 0xdd]]),
            dst in any::<[u8; 6]>(),
            payload in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut frame = dst.to_vec();
            frame.extend_from_slice(&A1_MAC);
            frame.extend_from_slice(&ethertype);
            frame.extend_from_slice(&payload);
            assert_isolated(A1, SWITCH.decide(A1, &frame));
        }

        #[test]
        fn decide_never_panics_on_mutated_fixtures(
            fixture in 0..ALL.len(),
            edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..8),
            cut in any::<Index>(),
        ) {
            let mut frame = ALL[fixture].1.to_vec();
            for (at, value) in edits {
                let at = at.index(frame.len());
                frame[at] = value;
            }
            let len = cut.index(frame.len() + 1);
            assert_isolated(A1, SWITCH.decide(A1, &frame[..len]));
        }
    }

    #[test]
    fn gso_frames_may_exceed_the_mtu_but_not_64k() {
        let sw = Switch::new(&topology());
        // A 60 000-byte IPv4/TCP super-frame from a1 to a2: IPv4 total length matches.
        let mut big = IPV4_TCP.to_vec();
        big.resize(60_000, 0);
        let total = u16::try_from(60_000 - 14).unwrap().to_be_bytes();
        big[at::IPV4_TOTAL_LEN..at::IPV4_TOTAL_LEN + 2].copy_from_slice(&total);
        assert_eq!(sw.decide(A1, &big), Decision::Drop(Oversized));
        assert_eq!(sw.decide_gso(A1, &big), Unicast(ACME, A2));
        // The anti-spoof rules still apply to super-frames.
        let spoofed = patched(&big, at::IPV4_SRC, &[10, 0, 0, 9]);
        assert_eq!(sw.decide_gso(A1, &spoofed), Decision::Drop(SpoofedIpv4));
        let mut huge = big.clone();
        huge.resize(GSO_MAX_FRAME + 1, 0);
        assert_eq!(sw.decide_gso(A1, &huge), Decision::Drop(Oversized));
    }
}
