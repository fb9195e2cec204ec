//! Builds the `realm-guest` crate into a WebAssembly component: compiles it
//! for wasm32 with a nested cargo, then wraps the core module with
//! `wit-component`.
//!
//! The wasm toolchain is, in order of preference: a rustup toolchain with
//! the `wasm32-unknown-unknown` target installed, or Debian's `rustc-web`
//! (with `rust-web-src`, building std with `-Zbuild-std`). `./dev setup`
//! installs the latter when neither is present.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

/// The nested build's target dir, relative to the workspace's `target/`.
pub const GUEST_TARGET_DIR: &str = "guest";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

/// What to build.
pub struct GuestBuild<'a> {
    /// The workspace root (holds `guest/` and `wit/`).
    pub workspace: &'a Path,
    /// Cargo target dir of the nested build; reuse it to keep builds fast
    /// ([`GUEST_TARGET_DIR`] under the workspace's target dir is shared by
    /// the built-in guest and the tests' variants).
    pub target_dir: PathBuf,
    /// Cargo features of `realm-guest` to enable.
    pub features: &'a [&'a str],
}

impl GuestBuild<'_> {
    /// Compiles the guest and answers the component bytes.
    ///
    /// Builds of every feature set share one target dir (and so one build
    /// of std), but write the same output file: a lock on the target dir
    /// keeps another build from replacing it before it is read.
    pub fn component(&self) -> Result<Vec<u8>, String> {
        std::fs::create_dir_all(&self.target_dir).map_err(|e| format!("cannot create {}: {e}", self.target_dir.display()))?;
        let lock_path = self.target_dir.join(".guest-build.lock");
        let lock = std::fs::File::create(&lock_path).map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
        lock.lock().map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        let core = self.core_module()?;
        let module = std::fs::read(&core).map_err(|e| format!("cannot read {}: {e}", core.display()))?;
        drop(lock);
        componentize(&module).map_err(|e| format!("cannot turn {} into a component: {e}", core.display()))
    }

    /// Compiles the guest crate with a nested cargo and answers the path of
    /// the core wasm module.
    pub fn core_module(&self) -> Result<PathBuf, String> {
        let mut cmd = if rustup_has_wasm_target() {
            Command::new("cargo")
        } else if Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_CARGO).exists() {
            Command::new(DEBIAN_CARGO)
        } else {
            return Err("no wasm32 toolchain: install the rustup target `wasm32-unknown-unknown`, \
                        or run `./dev setup` (installs Debian's rustc-web, cargo-web, rust-web-src, lld)"
                .into());
        };
        // A nested cargo must not inherit the outer build's settings
        // (jobserver, target, profile, wrappers), or it mis-builds or deadlocks.
        for (key, _) in env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if (key.starts_with("CARGO") || key.starts_with("RUST")) && key != "CARGO_HOME" && key != "RUSTUP_HOME" {
                cmd.env_remove(&key);
            }
        }
        cmd.args(["build", "--target", TARGET]);
        if cmd.get_program() == DEBIAN_CARGO {
            cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            cmd.arg("-Zbuild-std=std,panic_abort");
        }
        if !self.features.is_empty() {
            cmd.arg("--features").arg(self.features.join(","));
        }
        cmd.args(["--profile", "guest", "-p", "realm-guest", "--target-dir"])
            .arg(&self.target_dir)
            .current_dir(self.workspace);
        let status = cmd.status().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
        if !status.success() {
            return Err(format!("building the guest failed ({status}); see the cargo output above"));
        }
        Ok(self.target_dir.join(TARGET).join("guest").join("realm_guest.wasm"))
    }
}

/// Wraps a core module that carries wit-bindgen's component-type section.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| format!("{e:#}"))
}

fn rustup_has_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET))
        .unwrap_or(false)
}
