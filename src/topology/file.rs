//! Serde mirror of the topology file, exactly as written.
//!
//! Contract: [`FileTopology::from_toml`] fails only on TOML syntax errors (and on the rare serde
//! error it cannot pin to a key), returning one [`ValidationError`] with file, line:col and
//! message. Unknown keys and values of the wrong TOML type do not abort the parse: each is
//! recorded in [`FileTopology::problems`], the key is dropped, and [`super::validate()`] reports
//! them together with every other problem. Every leaf is kept raw (rates, MACs and addresses as
//! strings, integers as `i64`) so that validation, not serde, judges the values and collects all
//! errors. Tables are `BTreeMap`s, so tenants and servers come out in name order.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::validate::{ErrorKind, Location, ValidationError, key_segment};

/// The topology file as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileTopology {
    /// `[host]`: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<FileHost>,
    /// `[tenants.<name>]`, by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, FileTenant>,
    /// `[servers.<name>]`, by name.
    #[serde(default)]
    pub servers: BTreeMap<String, FileServer>,
    /// `[uplink]`: optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<FileUplink>,
    /// `[hosts.<name>]`, by name: present only in a cluster topology (see
    /// [`super::cluster`]); a file without it is a single-host topology.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, FileClusterHost>,
    /// Unknown keys and mistyped values found while reading; the keys were dropped.
    #[serde(skip)]
    pub problems: Vec<ValidationError>,
}

/// `[host]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHost {
    /// Aggregate rate, a tc rate such as `"1gbit"`: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Longest a frame may wait in a tenant's shaper queue, e.g. `"20ms"` (default 100 ms); optional.
    pub queue_delay: Option<String>,
    /// Token-bucket size as time at the bucket's rate, e.g. `"1ms"`; optional.
    pub burst: Option<String>,
}

/// `[hosts.<name>]`: one host of a cluster topology.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileClusterHost {
    /// The host's tunnel endpoint (its VXLAN underlay address), `"192.0.2.1"`: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    /// The namespace standing in for the host's own stack; default: netd's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The host's local capacity, as `[host] capacity` of a single host: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// The underlay's MTU; default 1500. Tenant frames are at most this minus 50 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// A VXLAN endpoint that netd does not run (a Linux host with a kernel `vxlan` device,
    /// an appliance): its servers are declared like any other's, and it counts as alive
    /// without a lease. Default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
}

/// `[tenants.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileTenant {
    /// Guaranteed rate: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guaranteed: Option<String>,
    /// Maximum rate including borrowed bandwidth; default: host capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<String>,
    /// Share of loaned bandwidth; default 1, at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Storm control: broadcast/multicast frames/s accepted from each of the tenant's
    /// ports; default 1000, at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast_pps: Option<i64>,
    /// The tenant's subnet and gateway address, `"10.1.0.1/24"`; optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The tenant's IPv6 subnet and gateway address, `"fd00:1::1/64"`; optional, needs
    /// `gateway`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    /// Private subnet that leaves with source NAT; default false (public addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<bool>,
    /// DNS servers handed out by DHCP, `["9.9.9.9"]`; optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    /// `[tenants.<name>.uplink]`: the tenant's rates on the uplink, per direction; optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<FileRates>,
    /// The tenant's VXLAN network identifier in a cluster; derived from the name when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<i64>,
    /// The tenant's VLAN on a bridged uplink, 1 to 4094; optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<i64>,
}

/// `[uplink]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileUplink {
    /// The host's interface towards the provider's network: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The namespace standing in for the host's own stack; default: netd's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// What the shaper shares out in each direction: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// `"routed"` (default: through the host's kernel) or `"bridged"` (each tenant's L2
    /// domain extends onto its VLAN of the interface).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The uplink shapers' queue bound (default 50 ms; `[host] queue_delay` is the host's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_delay: Option<String>,
}

/// Rates overriding a tenant's own on the uplink (`[tenants.<name>.uplink]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRates {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guaranteed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

/// `[servers.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Name of the owning tenant: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// IPv4 address with prefix, `"10.1.0.10/24"`: required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// MAC of the server's interface; derived from the name when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Network namespace name; default: the server name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Optional IPv6 address with prefix, `"fd00::10/64"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// Interface MTU; default 1500, allowed 1280..=9000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// Optional per-server guaranteed rate inside the tenant's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guaranteed: Option<String>,
    /// Optional per-server ceiling inside the tenant's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<String>,
    /// Leave `eth0` unconfigured: the server gets its address by DHCP from the gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    /// In a cluster topology, the host that runs the server: required there, refused
    /// elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl FileTopology {
    /// Parse TOML text; `path` names the file in errors.
    // The error is big (file, key, value, kind) but built at most once per load: not worth a Box.
    #[allow(clippy::result_large_err)]
    pub fn from_toml(path: &Path, text: &str) -> Result<FileTopology, ValidationError> {
        let mut root = DeTable::parse(text).map_err(|e| toml_error(path, text, &e))?;
        let mut problems = Vec::new();
        // Each round either succeeds or drops the one key serde complained about, so the loop
        // ends after at most one round per key in the file.
        loop {
            let attempt = FileTopology::deserialize(toml::de::Deserializer::from(root.clone()));
            let err = match attempt {
                Ok(mut file) => {
                    // Serde met them in key order; report them in file order.
                    problems.sort_by_key(|p: &ValidationError| p.location);
                    file.problems = problems;
                    return Ok(file);
                }
                Err(err) => err,
            };
            let Some(span) = err.span() else {
                return Err(toml_error(path, text, &err));
            };
            let Some((keys, value)) = remove_key_at(root.get_mut(), &span) else {
                return Err(toml_error(path, text, &err));
            };
            // deny_unknown_fields words it as serde's `Error::unknown_field`; any other error
            // pinned to a key is a value of the wrong TOML type.
            let kind = match err.message().strip_prefix("unknown field ") {
                Some(rest) => ErrorKind::UnknownKey {
                    expected: rest
                        .split_once(", expected ")
                        .map(|(_, expected)| expected.to_string())
                        .unwrap_or_default(),
                },
                None => ErrorKind::WrongType {
                    message: plain_words(err.message()),
                },
            };
            problems.push(ValidationError {
                file: path.to_path_buf(),
                location: Some(location(text, span.start)),
                key: keys
                    .iter()
                    .map(|k| key_segment(k))
                    .collect::<Vec<_>>()
                    .join("."),
                value: Some(show_value(text, &value)),
                kind,
            });
        }
    }
}

/// Turn a toml error into a `Toml` validation error at its line:col.
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> ValidationError {
    ValidationError {
        file: path.to_path_buf(),
        location: err.span().map(|span| location(text, span.start)),
        key: String::new(),
        value: None,
        kind: ErrorKind::Toml {
            message: plain_words(err.message().trim()),
        },
    }
}

/// Replace serde's Rust words in a message with TOML ones.
fn plain_words(message: &str) -> String {
    [
        ("expected i64", "expected an integer"),
        ("expected struct FileHost", "expected a table"),
        ("expected struct FileTenant", "expected a table"),
        ("expected struct FileServer", "expected a table"),
        ("expected struct FileClusterHost", "expected a table"),
        ("expected struct FileTopology", "expected a table"),
        ("expected a map", "expected a table"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: table"),
    ]
    .iter()
    .fold(message.to_string(), |m, (from, to)| m.replace(from, to))
}

/// Return the 1-based line and column (in characters) of a byte offset.
fn location(text: &str, offset: usize) -> Location {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    Location { line, col }
}

/// Show a value as written, shortened to its first line; tables and arrays of tables that
/// were written as `[headers]` show as `{...}` and `[...]`.
fn show_value(text: &str, value: &Spanned<DeValue<'_>>) -> String {
    let raw = text.get(value.span()).unwrap_or("").trim();
    match value.get_ref() {
        DeValue::Table(_) if !raw.starts_with('{') => return "{...}".to_string(),
        DeValue::Array(_) if !raw.starts_with('[') || raw.starts_with("[[") => {
            return "[...]".to_string();
        }
        _ => {}
    }
    match raw.split_once('\n') {
        Some((first, _)) => format!("{} ...", first.trim_end()),
        None => raw.to_string(),
    }
}

/// Find the key serde complained about, remove it, and return its key path and value.
///
/// An unknown key's error points at the key, a wrong type's at the value. Keys are matched
/// first, at the shallowest level, so an unknown `[foo.bar]` drops `foo` once; values are
/// matched at the deepest level, since a `[servers.x]` header's span need not cover its keys.
fn remove_key_at<'i>(
    table: &mut DeTable<'i>,
    span: &Range<usize>,
) -> Option<(Vec<String>, Spanned<DeValue<'i>>)> {
    let contains = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    let hit = table
        .iter()
        .find(|(key, _)| contains(key.span()))
        .map(|(key, _)| key.get_ref().to_string());
    if let Some(key) = hit {
        let value = table.remove(key.as_str())?;
        return Some((vec![key], value));
    }
    for (key, value) in table.iter_mut() {
        if let DeValue::Table(inner) = value.get_mut()
            && let Some((mut path, removed)) = remove_key_at(inner, span)
        {
            path.insert(0, key.get_ref().to_string());
            return Some((path, removed));
        }
    }
    let hit = table
        .iter()
        .find(|(_, value)| contains(value.span()))
        .map(|(key, _)| key.get_ref().to_string());
    let key = hit?;
    let value = table.remove(key.as_str())?;
    Some((vec![key], value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::result_large_err)]
    fn read(text: &str) -> Result<FileTopology, ValidationError> {
        FileTopology::from_toml(Path::new("t.toml"), text)
    }

    #[test]
    fn reads_every_key() {
        let file = read(
            r#"
            host.capacity = "1gbit"
            tenants.a = { guaranteed = "1mbit", ceiling = "2mbit", weight = 3 }
            [servers.s]
            tenant = "a"
            ip = "10.0.0.1/24"
            mac = "02:00:00:00:00:01"
            netns = "ns"
            ipv6 = "fd00::1/64"
            mtu = 9000
            guaranteed = "1mbit"
            ceiling = "2mbit"
            "#,
        )
        .unwrap();
        assert!(file.problems.is_empty());
        assert_eq!(file.tenants["a"].weight, Some(3));
        assert_eq!(file.servers["s"].mtu, Some(9000));
        assert_eq!(file.servers["s"].netns.as_deref(), Some("ns"));
    }

    #[test]
    fn unknown_keys_are_collected_with_line_and_column() {
        let file = read("[host]\ncapacity = \"1gbit\"\nspeed = 5\n[extra.deep]\nx = 1\n[servers]\ns.colour = \"red\"\n")
            .unwrap();
        let found: Vec<_> = file
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_deref(), p.location))
            .collect();
        assert_eq!(
            found,
            [
                ("host.speed", Some("5"), Some(Location { line: 3, col: 1 })),
                // An unknown table is dropped once, as a whole.
                ("extra", Some("{...}"), Some(Location { line: 4, col: 2 })),
                (
                    "servers.s.colour",
                    Some("\"red\""),
                    Some(Location { line: 7, col: 3 })
                ),
            ]
        );
        assert!(
            file.problems
                .iter()
                .all(|p| matches!(p.kind, ErrorKind::UnknownKey { .. }))
        );
        assert_eq!(file.host.unwrap().capacity.as_deref(), Some("1gbit"));
    }

    #[test]
    fn wrong_types_are_collected_in_toml_words() {
        let file = read("host = 5\n[tenants.a]\nweight = \"x\"\n[[servers]]\n").unwrap();
        let found: Vec<_> = file
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.kind.to_string()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "host",
                    "invalid type: integer `5`, expected a table".to_string()
                ),
                (
                    "tenants.a.weight",
                    "invalid type: string \"x\", expected an integer".to_string()
                ),
                (
                    "servers",
                    "invalid type: array, expected a table".to_string()
                ),
            ]
        );
        assert!(file.host.is_none() && file.servers.is_empty());
    }

    #[test]
    fn syntax_errors_stop_with_one_located_error() {
        for (text, line, col) in [
            ("a = \n", 1, 5),
            ("[host]\n[host]\n", 2, 2),
            ("x = \"é\n", 1, 7),
        ] {
            let err = read(text).unwrap_err();
            assert!(matches!(err.kind, ErrorKind::Toml { .. }), "{err}");
            assert_eq!(
                err.location,
                Some(Location { line, col }),
                "{text:?}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("t.toml:{line}:{col}: ")),
                "{err}"
            );
        }
    }
}
