//! Embeds the Windows resources (icon, manifest, version information) when
//! building for Windows, from any host: the target is read from
//! `CARGO_CFG_TARGET_OS`, not `cfg!(windows)` (which is the build host's).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=assets/securechat.ico");
    println!("cargo:rerun-if-changed=assets/securechat.exe.manifest");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        return;
    }
    let version = env!("CARGO_PKG_VERSION");
    let mut res = winresource::WindowsResource::new();
    // From Linux, mingw's windres (x86_64-w64-mingw32-windres) is used.
    if std::env::var("HOST").is_ok_and(|h| !h.contains("windows")) {
        res.set_toolkit_path("/usr/bin");
        res.set_windres_path("x86_64-w64-mingw32-windres");
        res.set_ar_path("x86_64-w64-mingw32-ar");
    }
    res.set_icon("assets/securechat.ico")
        .set_manifest_file("assets/securechat.exe.manifest")
        .set("ProductName", "SecureChat")
        .set("FileDescription", "SecureChat")
        .set("CompanyName", "SecureChat")
        .set("LegalCopyright", "MIT License")
        .set("OriginalFilename", "SecureChat.exe")
        .set("InternalName", "SecureChat")
        .set("ProductVersion", version)
        .set("FileVersion", version);
    if let Err(e) = res.compile() {
        // A Windows build without its icon and manifest is not shipped.
        panic!("cannot embed the Windows resources: {e}");
    }
}
