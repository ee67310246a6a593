//! Where mappings and steering rules come from besides the config file: the clouds' metadata.
pub mod aliyun;
pub mod aws;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The outcome of the last provider syncs, kept where `ipnat status` finds it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub provider: String,
    pub last_attempt_unix: u64,
    /// 0: never.
    pub last_success_unix: u64,
    /// `ok`, or the last error.
    pub result: String,
    /// Steering rules the provider contributes.
    pub rules: usize,
}

pub fn state_path(pin_path: &Path) -> PathBuf {
    crate::host::state_path(pin_path)
        .with_extension("")
        .with_extension("sync.json")
}

impl SyncState {
    pub fn load(pin_path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(state_path(pin_path)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, pin_path: &Path) -> std::io::Result<()> {
        let path = state_path(pin_path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)
    }

    pub fn remove(pin_path: &Path) {
        let _ = std::fs::remove_file(state_path(pin_path));
    }
}
