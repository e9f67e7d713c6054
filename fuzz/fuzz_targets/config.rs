//! overlayd's TOML config through `overlayd::config::Config::parse`, the function
//! `overlayd` and `overlayd --check-config` use.
//!
//! `parse` reads the private key file the config names; the target keeps that inside a
//! temporary folder made once: an input whose `private_key_file` is absolute or climbs out
//! with `..` is only parsed as TOML (it would read whatever file it names on this host).
//! The folder holds `private.key` (0600) and `open.key` (0644, which must be refused).
//!
//! Checked: nothing panics; a config that validates prints (`redacted`) as TOML that
//! validates again and prints the same.
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use overlayd::config::Config;

/// The folder with the key files, made once per process and removed by no one (it is
/// small and under the system's temporary folder).
fn folder() -> &'static Path {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("overlay-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let key = overlay_fuzz::wireguard_key(5);
        keys::write_private_key_file(&dir.join("private.key"), &key).expect("a key file");
        let open = dir.join("open.key");
        keys::write_private_key_file(&open, &key).expect("a key file");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
        dir
    })
}

/// Whether the config names a key file inside the folder (relative, no `..`).
fn key_file_is_local(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return true; // `parse` stops at the TOML error, before any file is read
    };
    match table.get("private_key_file") {
        Some(toml::Value::String(path)) => {
            let path = Path::new(path);
            path.is_relative()
                && path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
        }
        _ => true, // missing or not a string: a parse error
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !key_file_is_local(text) {
        return;
    }
    let path = folder().join("overlayd.toml");
    let Ok(config) = Config::parse(&path, text) else {
        return;
    };
    let printed = config.redacted();
    let again = Config::parse(&path, &printed)
        .unwrap_or_else(|e| panic!("the printed config does not validate: {e}\n{printed}"));
    assert_eq!(
        again.redacted(),
        printed,
        "the printed config changed when read back"
    );
});
