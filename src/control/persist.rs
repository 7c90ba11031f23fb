//! Live changes written back to the topology file, so a reload or a restart keeps them.
//!
//! Contract: [`write_back`] edits the file the daemon runs (its comments, order and layout
//! kept: `toml_edit`), checks that the edited text validates to exactly the proposed
//! topology, and replaces the file atomically (a temporary file beside it, same permissions,
//! synced, renamed over). It returns the previous text so the caller can put it back if
//! applying the change fails. On any error the file is untouched.
//!
//! Why write back rather than keep changes only in memory: the file stays the one truth an
//! operator edits, `netd reload` and a restart never silently undo a change, and the file
//! can be versioned like any configuration.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table};

use super::{Change, RateChange};
use crate::topology::{self, LoadError, Topology};

/// The comment netd puts above a server it added live, so a later daemon (after a restart)
/// still knows the server was not the operator's own line and asks before pruning it.
pub const LIVE_MARK: &str = "# added live by netd";

/// Why a change could not be written back.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Read(#[from] LoadError),
    #[error("Cannot edit the topology file {path}: {reason}")]
    Edit { path: PathBuf, reason: String },
    #[error("Cannot write the topology file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Write `change` into the topology file at `path`, whose result must be `proposed`; return
/// the file's previous text.
pub fn write_back(
    path: &Path,
    change: &Change,
    proposed: &Topology,
) -> Result<String, PersistError> {
    let edit_err = |reason: String| PersistError::Edit {
        path: path.to_path_buf(),
        reason,
    };
    let old = topology::read_text(path)?;
    let mut doc: DocumentMut = old.parse().map_err(|e| edit_err(format!("{e}")))?;
    edit(&mut doc, change).map_err(edit_err)?;
    let new = doc.to_string();
    // The edited file must say what the running daemon will do, no more, no less.
    let reread = topology::parse(path, &new).map_err(|errors| {
        edit_err(format!(
            "the edited file would not validate ({} problems)",
            errors.len()
        ))
    })?;
    if reread.to_file() != proposed.to_file() {
        return Err(edit_err(
            "the edited file would not match the change; edit it by hand and reload".into(),
        ));
    }
    replace(path, &new)?;
    Ok(old)
}

/// Return the servers of the file at `path` that netd added live (marked [`LIVE_MARK`]).
pub fn live_servers(path: &Path) -> std::collections::BTreeSet<String> {
    let Ok(Ok(doc)) = topology::read_text(path).map(|text| text.parse::<DocumentMut>()) else {
        return Default::default();
    };
    let Some(servers) = doc.get("servers").and_then(Item::as_table) else {
        return Default::default();
    };
    servers
        .iter()
        .filter(|(_, item)| {
            item.as_table()
                .and_then(|t| t.decor().prefix())
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.contains(LIVE_MARK))
        })
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Put `text` back as the file at `path` (after a change that could not be applied).
pub fn restore(path: &Path, text: &str) -> Result<(), PersistError> {
    replace(path, text)
}

/// Write one tenant's new rates into the document.
fn edit_rate(doc: &mut DocumentMut, rate: &RateChange) -> Result<(), String> {
    let tenant = &rate.tenant;
    let mut entry = entry_mut(doc, "tenants", tenant)?;
    if rate.uplink {
        // `[tenants.NAME.uplink]`, created if absent.
        entry = entry
            .entry("uplink")
            .or_insert(toml_edit::table())
            .as_table_like_mut()
            .ok_or_else(|| format!("tenants.{tenant}.uplink is not a table"))?;
    }
    if let Some(g) = &rate.guaranteed {
        set(entry, "guaranteed", g.as_str().into());
    }
    if let Some(c) = &rate.ceiling {
        set(entry, "ceiling", c.as_str().into());
    }
    if let Some(w) = rate.weight {
        set(entry, "weight", w.into());
    }
    Ok(())
}

/// Apply `change` to the document.
fn edit(doc: &mut DocumentMut, change: &Change) -> Result<(), String> {
    match change {
        Change::SetRate { .. } | Change::SetRates { .. } => {
            for rate in &change.rate_changes() {
                edit_rate(doc, rate)?;
            }
        }
        Change::AddTenant { name, tenant } => insert(doc, "tenants", name, tenant, None)?,
        Change::AddServer { name, server } => {
            insert(doc, "servers", name, server, Some(LIVE_MARK))?;
        }
        Change::RemoveTenant { name } => remove(doc, "tenants", name)?,
        Change::RemoveServer { name } => remove(doc, "servers", name)?,
    }
    Ok(())
}

/// Set `key` to `new`, keeping the old value's surroundings (spacing, trailing comment).
fn set(entry: &mut dyn toml_edit::TableLike, key: &str, mut new: toml_edit::Value) {
    if let Some(old) = entry.get(key).and_then(Item::as_value) {
        *new.decor_mut() = old.decor().clone();
    }
    entry.insert(key, Item::Value(new));
}

/// Return the table of `[section.name]`, however the file spells it (table, dotted keys or
/// inline table).
fn entry_mut<'d>(
    doc: &'d mut DocumentMut,
    section: &str,
    name: &str,
) -> Result<&'d mut dyn toml_edit::TableLike, String> {
    doc.get_mut(section)
        .and_then(Item::as_table_like_mut)
        .and_then(|t| t.get_mut(name))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| format!("no [{section}.{name}] table in the file"))
}

/// Add `[section.name]` with the keys of `entry` (serialised as the file would spell them),
/// under a `mark` comment if given.
fn insert(
    doc: &mut DocumentMut,
    section: &str,
    name: &str,
    entry: &impl serde::Serialize,
    mark: Option<&str>,
) -> Result<(), String> {
    let text = toml::to_string(entry).map_err(|e| e.to_string())?;
    let parsed: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let mut table: Table = parsed.as_table().clone();
    table.set_implicit(false);
    if let Some(mark) = mark {
        table.decor_mut().set_prefix(format!("\n{mark}\n"));
    }
    let sections = doc
        .entry(section)
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true); // `[section.name]` headers only, no bare `[section]`
            Item::Table(t)
        })
        .as_table_like_mut()
        .ok_or_else(|| format!("{section} is not a table in the file"))?;
    sections.insert(name, Item::Table(table));
    Ok(())
}

/// Remove `[section.name]`.
fn remove(doc: &mut DocumentMut, section: &str, name: &str) -> Result<(), String> {
    doc.get_mut(section)
        .and_then(Item::as_table_like_mut)
        .and_then(|t| t.remove(name))
        .map(|_| ())
        .ok_or_else(|| format!("no [{section}.{name}] table in the file"))
}

/// Replace the file at `path` with `text`: written beside it with its permissions, synced,
/// then renamed over it, so a reader sees the old file or the new one, never half of one.
fn replace(path: &Path, text: &str) -> Result<(), PersistError> {
    let write_err = |source| PersistError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o644);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.netd-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::file::{FileServer, FileTenant};

    const FILE: &str = r#"# The operator's notes stay where they are.
[host]
capacity = "1gbit"   # the NIC

[tenants]
blue = { guaranteed = "100mbit" }

[tenants.acme]
guaranteed = "300mbit"  # contract 42

[servers.acme-web]
tenant = "acme"
ip = "10.1.0.10/24"
"#;

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netd-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Propose `change` against the file and write it back; return the new text.
    fn apply(path: &Path, change: &Change) -> Result<String, PersistError> {
        let running = topology::load(path).unwrap();
        let (mut t, mut p) = (100, 100);
        let proposed = super::super::change::propose(&running, change, &mut t, &mut p).unwrap();
        write_back(path, change, &proposed)?;
        Ok(std::fs::read_to_string(path).unwrap())
    }

    #[test]
    fn changes_are_written_back_keeping_comments_and_layout() {
        let path = temp("keep.toml", FILE);
        let text = apply(
            &path,
            &Change::SetRate {
                tenant: "acme".into(),
                guaranteed: Some("400mbit".into()),
                ceiling: None,
                weight: Some(3),
                uplink: false,
            },
        )
        .unwrap();
        assert!(text.starts_with("# The operator's notes stay where they are.\n"));
        assert!(text.contains("capacity = \"1gbit\"   # the NIC"), "{text}");
        assert!(text.contains("guaranteed = \"400mbit\""), "{text}");
        assert!(text.contains("weight = 3"), "{text}");
        let text = apply(
            &path,
            &Change::SetRate {
                tenant: "blue".into(),
                guaranteed: Some("200mbit".into()),
                ceiling: None,
                weight: None,
                uplink: false,
            },
        )
        .unwrap();
        assert!(
            text.contains("blue = { guaranteed = \"200mbit\" }"),
            "{text}"
        );
        let server = FileServer {
            tenant: Some("blue".into()),
            ip: Some("10.2.0.5/24".into()),
            ..FileServer::default()
        };
        let add = Change::AddServer {
            name: "blue-db".into(),
            server,
        };
        let text = apply(&path, &add).unwrap();
        assert!(
            text.contains("# added live by netd\n[servers.blue-db]\ntenant = \"blue\""),
            "{text}"
        );
        assert_eq!(live_servers(&path), ["blue-db".to_string()].into());
        let tenant = FileTenant {
            guaranteed: Some("50mbit".into()),
            ..FileTenant::default()
        };
        apply(
            &path,
            &Change::AddTenant {
                name: "initech".into(),
                tenant,
            },
        )
        .unwrap();
        let text = apply(
            &path,
            &Change::RemoveServer {
                name: "acme-web".into(),
            },
        )
        .unwrap();
        assert!(!text.contains("acme-web"), "{text}");
        let back = topology::load(&path).unwrap();
        assert_eq!(back.servers.len(), 1);
        assert_eq!(back.tenants.len(), 3);
        assert!(text.contains("# contract 42"), "{text}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_file_that_changed_under_the_daemon_is_not_overwritten() {
        let path = temp("moved.toml", FILE);
        let running = topology::load(&path).unwrap();
        let change = Change::SetRate {
            tenant: "acme".into(),
            guaranteed: Some("400mbit".into()),
            ceiling: None,
            weight: None,
            uplink: false,
        };
        let (mut t, mut p) = (100, 100);
        let proposed = super::super::change::propose(&running, &change, &mut t, &mut p).unwrap();
        // Meanwhile the operator edited the file: the result would not be what runs.
        let edited = FILE.replace("capacity = \"1gbit\"", "capacity = \"2gbit\"");
        std::fs::write(&path, &edited).unwrap();
        let err = write_back(&path, &change, &proposed).unwrap_err();
        assert!(err.to_string().contains("would not match"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
        let _ = std::fs::remove_file(&path);
    }
}
