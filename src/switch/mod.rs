//! Switch (placeholder).
