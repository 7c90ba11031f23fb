//! Validation (placeholder).
use std::path::Path;

use super::Topology;
use super::file::FileTopology;

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

/// Check a parsed file and build the typed model.
pub fn validate(_path: &Path, _file: &FileTopology) -> Result<Topology, Vec<ValidationError>> {
    unimplemented!()
}
