//! "Start at login" for the tray menu: the Windows Run key, an XDG autostart
//! entry on Linux, a LaunchAgent on macOS. Each toggles both ways and
//! reports its state from what is really there.

use std::path::{Path, PathBuf};

/// Where the login item lives, and what it starts.
pub struct Autostart {
    /// The program started at login (this executable).
    exe: PathBuf,
    /// The folder of the entry (XDG autostart, LaunchAgents); unused on Windows.
    #[cfg_attr(windows, allow(dead_code))]
    dir: PathBuf,
}

#[cfg(windows)]
const RUN_KEY: &str = r"Software\Microsoft\Windows\CurrentVersion\Run";
#[cfg(windows)]
const RUN_VALUE: &str = "SecureChat";

impl Autostart {
    /// This user's login items, starting this executable.
    pub fn for_user() -> Option<Self> {
        let exe = std::env::current_exe().ok()?;
        let env_dir = |name: &str| std::env::var_os(name).map(PathBuf::from);
        let dir = if cfg!(target_os = "macos") {
            env_dir("HOME")?.join("Library/LaunchAgents")
        } else if cfg!(windows) {
            PathBuf::new()
        } else {
            env_dir("XDG_CONFIG_HOME")
                .or_else(|| env_dir("HOME").map(|h| h.join(".config")))?
                .join("autostart")
        };
        Some(Self { exe, dir })
    }

    /// Login items in `dir` starting `exe` (tests).
    pub fn at(dir: &Path, exe: &Path) -> Self {
        Self {
            exe: exe.to_owned(),
            dir: dir.to_owned(),
        }
    }

    #[cfg(not(windows))]
    fn entry(&self) -> PathBuf {
        if cfg!(target_os = "macos") {
            self.dir.join("org.securechat.SecureChat.plist")
        } else {
            self.dir.join("securechat.desktop")
        }
    }

    #[cfg(not(windows))]
    fn contents(&self) -> String {
        let exe = self.exe.to_string_lossy();
        if cfg!(target_os = "macos") {
            let escaped = exe
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>org.securechat.SecureChat</string>
  <key>ProgramArguments</key><array><string>{escaped}</string></array>
  <key>RunAtLoad</key><true/>
</dict>
</plist>
"#
            )
        } else {
            // Desktop Entry Exec quoting: the path in double quotes, with
            // `"`, `` ` ``, `$` and `\` escaped.
            let mut quoted = String::from("\"");
            for c in exe.chars() {
                if matches!(c, '"' | '`' | '$' | '\\') {
                    quoted.push('\\');
                }
                quoted.push(c);
            }
            quoted.push('"');
            format!(
                "[Desktop Entry]\nType=Application\nName=SecureChat\nComment=Team chat on this network\nExec={quoted}\nTerminal=false\nX-GNOME-Autostart-enabled=true\n"
            )
        }
    }

    /// Whether SecureChat starts at login now.
    pub fn enabled(&self) -> bool {
        #[cfg(windows)]
        {
            winreg::RegKey::predef(winreg::enums::HKEY_CURRENT_USER)
                .open_subkey(RUN_KEY)
                .and_then(|k| k.get_value::<String, _>(RUN_VALUE))
                .is_ok()
        }
        #[cfg(not(windows))]
        {
            self.entry().is_file()
        }
    }

    /// Turns starting at login on or off.
    pub fn set(&self, on: bool) -> std::io::Result<()> {
        #[cfg(windows)]
        {
            let (key, _) =
                winreg::RegKey::predef(winreg::enums::HKEY_CURRENT_USER).create_subkey(RUN_KEY)?;
            if on {
                key.set_value(RUN_VALUE, &format!("\"{}\"", self.exe.display()))
            } else {
                match key.delete_value(RUN_VALUE) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
            }
        }
        #[cfg(not(windows))]
        {
            if on {
                std::fs::create_dir_all(&self.dir)?;
                let tmp = self.entry().with_extension("tmp");
                std::fs::write(&tmp, self.contents())?;
                std::fs::rename(tmp, self.entry())
            } else {
                match std::fs::remove_file(self.entry()) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
            }
        }
    }
}

#[cfg(all(test, not(windows)))]
mod tests {
    use super::*;

    #[test]
    fn toggles_both_ways_and_quotes_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let login = dir.path().join("autostart");
        let auto = Autostart::at(&login, Path::new("/opt/Secure Chat/$bin/securechat"));
        assert!(!auto.enabled());
        auto.set(false).unwrap();
        auto.set(true).unwrap();
        assert!(auto.enabled());
        let text = std::fs::read_to_string(auto.entry()).unwrap();
        if cfg!(target_os = "macos") {
            assert!(text.contains("<string>/opt/Secure Chat/$bin/securechat</string>"));
        } else {
            assert!(text.contains("Exec=\"/opt/Secure Chat/\\$bin/securechat\"\n"));
        }
        auto.set(true).unwrap();
        auto.set(false).unwrap();
        assert!(!auto.enabled());
    }
}
