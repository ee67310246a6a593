//! Builds the eBPF programs with aya-build and leaves the objects in OUT_DIR for the library to
//! embed: `ipnat` (the product's programs) and `ipnat-bench` (the benchmarks'). Without bpf-linker (e.g. `cargo check`/`cargo clippy` on a machine that never ran
//! `cargo xtask setup`), or with AYA_BUILD_SKIP=1, an empty object is written instead and the
//! binary refuses to load it with an error that says how to fix it.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=../ipnat-common/src");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let have_linker = env::var_os("PATH")
        .is_some_and(|p| env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()));
    println!("cargo:rerun-if-env-changed=IPNAT_REQUIRE_EBPF");
    if env::var_os("IPNAT_REQUIRE_EBPF").is_some() && (skip || !have_linker) {
        anyhow::bail!(
            "IPNAT_REQUIRE_EBPF is set but bpf-linker is not on PATH: run `cargo xtask setup`"
        );
    }
    if skip || !have_linker {
        println!(
            "cargo:warning=eBPF programs not built ({}); run `cargo xtask setup` for a working ipnat",
            if skip {
                "AYA_BUILD_SKIP"
            } else {
                "bpf-linker not on PATH"
            }
        );
        for object in ["ipnat", "ipnat-bench"] {
            fs::write(out_dir.join(object), b"")?;
        }
        return Ok(());
    }
    let ebpf = aya_build::Package {
        name: "ipnat-ebpf",
        root_dir: "../ipnat-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
