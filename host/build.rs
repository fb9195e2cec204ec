//! Builds the built-in guest: compiles `realm-guest` to wasm32, turns the
//! core module into a component with `wit-component`, and leaves it in
//! `OUT_DIR/realm_guest.wasm` for `include_bytes!`.
//!
//! The wasm toolchain is, in order of preference: a rustup toolchain with
//! the `wasm32-unknown-unknown` target installed, or Debian's `rustc-web`
//! (with `rust-web-src`, building std with `-Zbuild-std`). `./dev setup`
//! installs the latter when neither is present.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ lives in the workspace").to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=REALM_GUEST_CORE_WASM");

    let core = match env::var_os("REALM_GUEST_CORE_WASM") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => build_core_module(&workspace),
    };
    let module = std::fs::read(&core).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", core.display())));
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .unwrap_or_else(|e| fail(&format!("cannot turn {} into a component: {e:#}", core.display())));
    let dest = out_dir.join("realm_guest.wasm");
    std::fs::write(&dest, component).unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", dest.display())));
}

/// Compiles the guest crate with a nested cargo in its own target dir and
/// answers the path of the core wasm module.
fn build_core_module(workspace: &Path) -> PathBuf {
    let target_dir = env::var_os("REALM_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target").join("guest"));
    let mut cmd = if rustup_has_wasm_target() {
        let mut cmd = Command::new("cargo");
        cmd.args(["build", "--target", TARGET]);
        cmd
    } else if Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_CARGO).exists() {
        let mut cmd = Command::new(DEBIAN_CARGO);
        cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
        cmd.args(["build", "--target", TARGET, "-Zbuild-std=std,panic_abort"]);
        cmd
    } else {
        fail(
            "no wasm32 toolchain: install the rustup target `wasm32-unknown-unknown`, \
             or run `./dev setup` (installs Debian's rustc-web, cargo-web, rust-web-src, lld)",
        )
    };
    // A nested cargo must not inherit the outer build's settings (jobserver,
    // target, profile, wrappers), or it mis-builds or deadlocks.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO") || key.starts_with("RUST")) && key != "CARGO_HOME" && key != "RUSTUP_HOME" {
            cmd.env_remove(&key);
        }
    }
    if cmd.get_program() == DEBIAN_CARGO {
        cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.args(["--profile", "guest", "-p", "realm-guest", "--target-dir"])
        .arg(&target_dir)
        .current_dir(workspace);
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {:?}: {e}", cmd.get_program())));
    if !status.success() {
        fail(&format!("building the guest failed ({status}); see the cargo output above"));
    }
    target_dir.join(TARGET).join("guest").join("realm_guest.wasm")
}

fn rustup_has_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET))
        .unwrap_or(false)
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
