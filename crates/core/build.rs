//! Shared build script of every Trident package (the others point `build` here).
//!
//! - Embeds an rpath to libtorch's directory, so binaries, tests and examples run from any
//!   directory without `LD_LIBRARY_PATH` (tch's own rpath covers only tch's targets).
//! - With the `cuda` feature, keeps `libtorch_cuda` linked (`--as-needed` would drop it,
//!   since nothing references its symbols directly).
//! - Records the libtorch version (the wheel's version.py) for `trident doctor`.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB").ok();
    if let Some(dir) = &lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    let version = lib_dir
        .map(|d| std::path::Path::new(&d).join("..").join("version.py"))
        .or_else(|| {
            std::env::var("LIBTORCH")
                .ok()
                .map(|d| std::path::Path::new(&d).join("version.py"))
        })
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim().trim_matches(['\'', '"']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TRIDENT_LIBTORCH_VERSION={version}");
}
