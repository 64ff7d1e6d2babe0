//! The `securechat` executable: parse the command line and hand over to the library.

// A double-click on Windows opens no console window.
#![cfg_attr(all(windows, not(debug_assertions)), windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    securechat::cli::main()
}
