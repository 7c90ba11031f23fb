//! Flow identity of a frame: which conversation it belongs to, for queueing inside a tenant.
//!
//! Contract: [`flow_hash`] never panics and reads only the headers it needs; frames of one
//! TCP/UDP conversation (addresses, protocol, ports) hash alike whatever their size (a GSO
//! super-frame and a lone ACK of the same connection share a flow); non-IP frames have none.

/// FNV-1a, 32 bits: cheap, allocation-free, good enough to spread flows over a few hundred
/// buckets (a collision only makes two flows share a bucket, never reorders one).
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for &b in *part {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// IP protocol numbers whose first 4 payload bytes are source and destination ports.
fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132 | 136) // TCP, UDP, SCTP, UDP-Lite
}

/// Return the flow hash of the Ethernet frame `frame` (no virtio-net header): addresses,
/// protocol and, for TCP/UDP, ports, for IPv4 and IPv6; `None` for anything else or for a
/// frame too short to say.
pub fn flow_hash(frame: &[u8]) -> Option<u32> {
    let ethertype = frame.get(12..14)?;
    let ip = frame.get(14..)?;
    match ethertype {
        [0x08, 0x00] => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let protocol = *ip.get(9)?;
            let addrs = ip.get(12..20)?;
            // Fragments after the first carry no ports: hash them by addresses alone so
            // every piece of a datagram lands in one flow.
            let fragment_offset = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
            let more_fragments = ip.get(6)? & 0x20 != 0;
            let ports = if has_ports(protocol) && fragment_offset == 0 && !more_fragments {
                ip.get(ihl..ihl + 4).unwrap_or_default()
            } else {
                &[]
            };
            Some(fnv1a(&[&[4, protocol], addrs, ports]))
        }
        [0x86, 0xdd] => {
            let next = *ip.get(6)?;
            let addrs = ip.get(8..40)?;
            // Extension headers are not walked: such frames hash by addresses alone.
            let ports = if has_ports(next) {
                ip.get(40..44).unwrap_or_default()
            } else {
                &[]
            };
            Some(fnv1a(&[&[6, next], addrs, ports]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP/UDP header (checksums left zero: not looked at).
    fn ipv4(protocol: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = protocol;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn one_connection_is_one_flow_and_ports_tell_connections_apart() {
        let a = ipv4(6, [10, 0, 0, 1], [10, 0, 0, 2], 40000, 5201);
        let mut big = a.clone();
        big.resize(64 * 1024, 0xab);
        assert_eq!(flow_hash(&a), flow_hash(&big), "size does not matter");
        let other = ipv4(6, [10, 0, 0, 1], [10, 0, 0, 2], 40001, 5201);
        assert_ne!(flow_hash(&a), flow_hash(&other));
        let ping = ipv4(1, [10, 0, 0, 1], [10, 0, 0, 2], 0, 0);
        assert!(flow_hash(&ping).is_some());
        assert_ne!(flow_hash(&a), flow_hash(&ping));
    }

    #[test]
    fn ipv6_flows_and_non_ip_frames() {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14 + 6] = 17;
        f[14 + 8] = 0xfe;
        f[14 + 40..14 + 42].copy_from_slice(&1234u16.to_be_bytes());
        let h = flow_hash(&f);
        assert!(h.is_some());
        f[14 + 41] ^= 1;
        assert_ne!(flow_hash(&f), h);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(flow_hash(&arp), None);
    }

    #[test]
    fn truncated_and_hostile_headers_never_panic() {
        let full = ipv4(17, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        for len in 0..full.len() {
            let _ = flow_hash(&full[..len]);
        }
        let mut bad_ihl = full.clone();
        bad_ihl[14] = 0x4f; // 60-byte header claimed in a 28-byte packet
        assert!(flow_hash(&bad_ihl).is_some());
    }
}
