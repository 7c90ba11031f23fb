//! The change log: the last changes asked of the daemon, applied or refused, with who asked
//! and when, for the console ("every applied change shows who made it and when").
//!
//! Contract: bounded ([`KEEP`] entries, oldest dropped first); recording never fails and
//! never blocks a change for long (one short mutex).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Applied, ControlError};

/// Entries kept.
pub const KEEP: usize = 100;

/// One change asked of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Who: `socket uid=0 pid=…`, `http 127.0.0.1:…`, `sighup`.
    pub origin: String,
    /// What kind: `set-rate`, `set-rates`, `add-server`, `reload`…
    pub action: String,
    pub ok: bool,
    /// What changed (applied), one line per touched object.
    pub changes: Vec<String>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Milliseconds since the Unix epoch now (the time the console shows).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The last [`KEEP`] changes.
#[derive(Debug, Default)]
pub struct Journal {
    entries: Mutex<VecDeque<ChangeRecord>>,
}

impl Journal {
    /// Record the outcome of one change.
    pub fn record(&self, origin: &str, action: &str, outcome: &Result<Applied, ControlError>) {
        let unix_ms = unix_ms();
        let (ok, changes, error) = match outcome {
            Ok(applied) => (true, applied.changes.clone(), None),
            Err(err) => (
                false,
                Vec::new(),
                Some(super::Response::error(err).error.unwrap_or_default()),
            ),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == KEEP {
            entries.pop_front();
        }
        entries.push_back(ChangeRecord {
            unix_ms,
            origin: origin.to_string(),
            action: action.to_string(),
            ok,
            changes,
            error,
        });
    }

    /// Return the entries, oldest first.
    pub fn recent(&self) -> Vec<ChangeRecord> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_entries_with_who_and_what() {
        let journal = Journal::default();
        for i in 0..KEEP + 5 {
            let outcome = if i % 2 == 0 {
                Ok(Applied {
                    changes: vec![format!("change {i}")],
                    datapath_us: Some(1),
                })
            } else {
                Err(ControlError::UnknownTenant(format!("t{i}")))
            };
            journal.record("http 127.0.0.1:1", "set-rate", &outcome);
        }
        let recent = journal.recent();
        assert_eq!(recent.len(), KEEP);
        // The first five went; the sixth (index 5) was refused, the seventh applied.
        assert_eq!(recent[0].error.as_deref(), Some("No such tenant: \"t5\""));
        assert_eq!(recent[1].changes, ["change 6"]);
        let last = recent.last().unwrap();
        assert!(last.ok && last.changes == ["change 104"] && last.error.is_none());
        assert!(!recent[0].ok);
        assert_eq!(last.origin, "http 127.0.0.1:1");
        assert!(last.unix_ms > 0);
    }
}
