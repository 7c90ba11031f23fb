//! Wire formats: typed, checked views over frame bytes.

pub mod mac;

pub use mac::MacAddr;
