//! Builds the built-in guest (see the `guest-build` crate) and leaves the
//! component in `OUT_DIR/realm_guest.wasm` for `include_bytes!`.
//! `REALM_GUEST_CORE_WASM` may name a prebuilt core module instead.

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("host/ lives in the workspace").to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for watched in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=REALM_GUEST_CORE_WASM");

    let component = match env::var_os("REALM_GUEST_CORE_WASM") {
        Some(prebuilt) => std::fs::read(&prebuilt)
            .map_err(|e| format!("cannot read {}: {e}", PathBuf::from(&prebuilt).display()))
            .and_then(|module| guest_build::componentize(&module)),
        None => guest_build::GuestBuild { workspace: &workspace, target_dir: workspace.join("target").join(guest_build::GUEST_TARGET_DIR), features: &[] }
            .component(),
    };
    let component = component.unwrap_or_else(|message| {
        eprintln!("error: {message}");
        std::process::exit(1);
    });
    let dest = out_dir.join("realm_guest.wasm");
    if let Err(e) = std::fs::write(&dest, component) {
        eprintln!("error: cannot write {}: {e}", dest.display());
        std::process::exit(1);
    }
}
