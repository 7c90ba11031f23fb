//! netd: multi-tenant virtual networking in userspace.
//!
//! A hosting provider runs many virtual servers on one Linux host. netd gives each its own
//! network namespace whose only interface (`eth0`) is the kernel side of a TAP that netd holds,
//! switches Ethernet frames between those TAPs inside per-tenant isolated L2 domains, and
//! shapes each tenant to its guaranteed rate, lending unused bandwidth by weight.
//!
//! ```text
//!  virtual server ns ──TAP──► port.read ─► wire: typed views over the bytes (no copy)
//!    ─► switch::guard: anti-spoof (src MAC / IPv4 / ARP sender / IPv6 == the port's)
//!    ─► switch::forward: tenant's MAC→port table; broadcast/multicast → tenant's other ports
//!    ─► shaper: charge the sending tenant; send now or queue (bounded)
//!    ─► port.write ──TAP──► destination virtual server ns
//! ```
//!
//! Layers and their contracts:
//! - [`topology`]: file → validated typed model; every error names file, key and value.
//! - [`wire`]: frame views; parsing never panics or allocates.
//! - [`switch`]: pure forwarding decisions; never crosses tenants.
//! - [`shaper`]: pure token-bucket hierarchy with an injected clock.
//! - [`kernel`]: the only `unsafe` code: TAP ioctls, namespaces, links; start-up rolls back.
//! - [`port`]: ports of every kind behind one trait: servers' TAPs, in-memory ports for tests,
//!   and (driven by a deadline instead of an fd) netd's own stacks.
//! - [`datapath`]: the event loop tying ports, switch and shaper together.
//! - [`stats`]: counters and drop reasons.
//! - [`handover`]: upgrades: a running netd hands its TAPs to a new one over the control socket.
//! - [`systemd`]: readiness, watchdog and reload notifications under a `Type=notify` unit.

pub mod control;
pub mod daemon;
pub mod datapath;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod handover;
pub mod kernel;
pub mod pool;
pub mod port;
pub mod quarantine;
pub mod shaper;
pub mod stats;
pub mod store;
pub mod storm;
pub mod switch;
pub mod systemd;
pub mod topology;
pub mod wire;
