//! Records the git commit the daemon is built from, for `repld_build_info{commit=...}`.
//! Outside a git checkout (a source tarball) it is `unknown`; `REPLD_COMMIT` in the build
//! environment overrides it (packagers).

fn main() {
    println!("cargo:rerun-if-env-changed=REPLD_COMMIT");
    let commit = std::env::var("REPLD_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    // Rebuild when HEAD moves (a commit or a checkout), so the label does not go stale.
    if let Ok(top) = std::process::Command::new("git")
        .args(["rev-parse", "--absolute-git-dir"])
        .output()
        && top.status.success()
    {
        let dir = String::from_utf8_lossy(&top.stdout).trim().to_owned();
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
    println!(
        "cargo:rustc-env=REPLD_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}
