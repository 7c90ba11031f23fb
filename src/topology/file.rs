//! Serde mirror of the topology file (placeholder, filled in by the topology work).
use std::path::Path;

use super::validate::ValidationError;

/// The topology file as written.
#[derive(Debug, Default)]
pub struct FileTopology {}

impl FileTopology {
    /// Parse TOML text.
    pub fn from_toml(_path: &Path, _text: &str) -> Result<FileTopology, ValidationError> {
        unimplemented!()
    }
}
