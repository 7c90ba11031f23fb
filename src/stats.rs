//! Counters: per-port and per-tenant atomics, and the reason for every drop.
//!
//! Contract: the data path never logs per frame; it bumps a counter. Counters are plain
//! relaxed atomics: readers (shutdown summary, `--stats-interval`, later the control plane)
//! may see a frame counted in one counter and not yet in another, never a torn value.

#[allow(unused_imports)]
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why the switch dropped a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Shorter than an Ethernet header or than its own headers claim.
    Truncated,
    /// Headers that do not parse (bad version, bad lengths, ...).
    Malformed,
    /// Longer than the port's MTU plus the Ethernet header.
    Oversized,
    /// An EtherType other than IPv4, ARP or IPv6 (VLAN tags included).
    UnsupportedEtherType,
    /// Source MAC is not the port's own.
    SpoofedMac,
    /// IPv4 source address is not the port's own.
    SpoofedIpv4,
    /// ARP sender hardware or protocol address is not the port's own.
    SpoofedArp,
    /// IPv6 source address is neither the port's address nor its link-local one.
    SpoofedIpv6,
    /// Unicast destination MAC that no port of the sender's tenant owns.
    UnknownDestination,
    /// Unicast addressed to the port it came from.
    Hairpin,
    /// The tenant's shaper queue was full.
    QueueFull,
    /// Writing to the destination TAP failed.
    WriteFailed,
}

impl DropReason {
    /// Every reason, in display order.
    pub const ALL: [DropReason; 12] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::Oversized,
        DropReason::UnsupportedEtherType,
        DropReason::SpoofedMac,
        DropReason::SpoofedIpv4,
        DropReason::SpoofedArp,
        DropReason::SpoofedIpv6,
        DropReason::UnknownDestination,
        DropReason::Hairpin,
        DropReason::QueueFull,
        DropReason::WriteFailed,
    ];

    /// Return the stable snake_case name used in logs, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::Oversized => "oversized",
            DropReason::UnsupportedEtherType => "unsupported_ethertype",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIpv4 => "spoofed_ipv4",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedIpv6 => "spoofed_ipv6",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::Hairpin => "hairpin",
            DropReason::QueueFull => "queue_full",
            DropReason::WriteFailed => "write_failed",
        }
    }

    #[allow(dead_code)] // for the per-reason counter arrays to come
    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
