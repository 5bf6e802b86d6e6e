//! The node's replication settings, kept in `DATA_DIR/replication.json`: the pairings this node
//! feeds (as master) and the masters it accepts (as slave). Written whole to a temporary file,
//! synced, and renamed over the old one, so a crash leaves either the old or the new settings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A pairing this node feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    /// The master PFS on this node.
    pub master_pfs: String,
    /// The slave's node name: its certificate's CN.
    pub slave_node: String,
    /// Where the slave's node listens.
    pub slave_endpoint: String,
    /// The slave PFS on that node.
    pub slave_pfs: String,
    /// Bytes per second on the wire; `None` = unlimited.
    pub bandwidth: Option<u64>,
    /// Why the pairing sends nothing: its master PFS was downgraded (`pfs downgrade`). An
    /// upgrade of the PFS clears it and the pairing streams again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// The newest checkpoint the slave is known to have confirmed (saved when a prune runs):
    /// the master's history after it is held for the slave. `None` = not known yet, which
    /// holds all history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<repld_engine::Tid>,
    /// A forced prune removed changes the slave had not confirmed: the pairing does not stream
    /// until it is resynced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_resync: bool,
    /// A resync (`replctl pair resync`): the TID of the full copy the slave takes before it
    /// continues incrementally. Held from the moment it is chosen (while `needs_resync` still
    /// parks the pairing, until the slave has been emptied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_base: Option<repld_engine::Tid>,
}

impl Pairing {
    /// Whether this pairing is `master_pfs -> slave_node:slave_pfs`.
    pub fn is(&self, master_pfs: &str, slave_node: &str, slave_pfs: &str) -> bool {
        self.master_pfs == master_pfs
            && self.slave_node == slave_node
            && self.slave_pfs == slave_pfs
    }
}

/// A master allowed to push to a slave PFS on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The slave PFS on this node.
    pub slave_pfs: String,
    /// The master's node name (certificate CN).
    pub master_node: String,
    /// The master PFS on that node.
    pub master_pfs: String,
}

/// Everything in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Pairings this node feeds.
    #[serde(default)]
    pub pairings: Vec<Pairing>,
    /// Masters this node accepts.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
}

impl Settings {
    /// The pairing of `master_pfs` with `slave_node:slave_pfs`, or `NOT_FOUND`.
    pub fn pairing_mut(
        &mut self,
        master_pfs: &str,
        slave_node: &str,
        slave_pfs: &str,
    ) -> Result<&mut Pairing, tonic::Status> {
        self.pairings
            .iter_mut()
            .find(|x| x.is(master_pfs, slave_node, slave_pfs))
            .ok_or_else(|| {
                tonic::Status::not_found(format!(
                    "{master_pfs} is not paired with {slave_node}:{slave_pfs} on this node"
                ))
            })
    }
}

/// The file and its current content.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// The settings as last saved.
    pub settings: Settings,
}

impl Store {
    /// Loads `DIR/replication.json`; a missing file is empty settings.
    pub fn load(data_dir: &Path) -> anyhow::Result<Store> {
        let path = data_dir.join("replication.json");
        let settings = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not valid replication settings ({e}); restore it from a backup or \
                     move it away and pair again",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Settings::default(),
            Err(e) => return Err(anyhow::anyhow!("read {}: {e}", path.display())),
        };
        Ok(Store { path, settings })
    }

    /// Saves `settings` durably, then adopts them.
    pub fn save(&mut self, settings: Settings) -> anyhow::Result<()> {
        use std::io::Write as _;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&settings)?;
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| anyhow::anyhow!("create {}: {e}", tmp.display()))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(|e| anyhow::anyhow!("write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| anyhow::anyhow!("rename {} into place: {e}", tmp.display()))?;
        if let Some(dir) = self.path.parent() {
            repld_engine::device::sync_dir(dir)?;
        }
        self.settings = settings;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_a_reload_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::load(dir.path()).expect("load");
        assert_eq!(store.settings, Settings::default());
        let mut s = Settings::default();
        s.pairings.push(Pairing {
            master_pfs: "data".into(),
            slave_node: "node2".into(),
            slave_endpoint: "https://10.0.0.2:7420".into(),
            slave_pfs: "data".into(),
            bandwidth: Some(4 << 20),
            halted: None,
            confirmed: Some(repld_engine::Tid(77)),
            needs_resync: true,
            resync_base: Some(repld_engine::Tid(99)),
        });
        store.save(s.clone()).expect("save");
        assert_eq!(Store::load(dir.path()).expect("reload").settings, s);
    }

    #[test]
    fn a_damaged_file_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("replication.json"), b"{ nope").expect("write");
        let e = Store::load(dir.path()).expect_err("damaged");
        assert!(e.to_string().contains("pair again"), "{e}");
    }
}
