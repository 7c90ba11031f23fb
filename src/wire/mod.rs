//! Wire formats: typed, checked views over frame bytes.
//!
//! Contract: parsing never allocates, and once a view's `new_checked` (or `check_len`) has
//! succeeded, none of its getters panics, whatever the bytes. The protocol views come from
//! `smoltcp::wire` and are re-exported here under smoltcp's prefixed names; this module adds
//! only what smoltcp lacks ([`MacAddr`], [`NdiscOptions`]).

pub mod coalesce;
pub mod flow;
pub mod mac;
pub mod ndisc;
pub mod segment;
pub mod vnet;

pub use mac::MacAddr;
pub use ndisc::NdiscOptions;
pub use smoltcp::wire::{
    ArpHardware, ArpOperation, ArpPacket, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpPacket,
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6ExtHeader,
    Ipv6Packet, NdiscOption, NdiscOptionType,
};

/// The unit error of every checked view: the bytes do not hold what they claim.
pub use smoltcp::wire::Error;
