//! The benchmark tool works: every scenario runs in its tiny form against
//! servers it starts itself, and the JSON has every key docs/BENCHMARKS.md
//! reports. No timing is asserted (that is the benchmarks' job).

use std::process::Stdio;

const KEYS: [&str; 17] = [
    "fanout_msgs_per_s",
    "fanout_direct_msgs_per_s",
    "fanout_ratio_vs_bare",
    "fanout_ratio_vs_python",
    "fanout_ratio_vs_node",
    "fanout_p99_ms",
    "fanout_p999_ms",
    "fanout_max_ms",
    "fanout_stolen",
    "fanout_direct_stolen",
    "idle_bytes_per_socket",
    "login_per_s",
    "login_ratio_vs_limit",
    "login_chat_p99_ratio",
    "login_stolen",
    "files_ratio_vs_curl",
    "start_ms",
];

fn baselines_installed() -> bool {
    let python = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let node = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("bench/baselines/node/node_modules/ws")
        .is_dir();
    python && node
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_runs_and_the_json_has_every_key() {
    let baselines = baselines_installed();
    if !baselines {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the baselines: ./test.sh installs them"
        );
        eprintln!(
            "note: Python websockets or Node ws missing: the bench test runs without baselines"
        );
    }
    let svg = tempfile::NamedTempFile::new().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_securechat-bench"));
    command
        .args(["all", "--tiny", "--json", "--svg"])
        .arg(svg.path())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if !baselines {
        command.arg("--no-baselines");
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), command.output())
        .await
        .expect("the tiny run ends")
        .unwrap();
    assert!(out.status.success(), "securechat-bench failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in KEYS {
        let value = &report[key];
        let skipped =
            !baselines && (key == "fanout_ratio_vs_python" || key == "fanout_ratio_vs_node");
        if skipped {
            assert!(value.is_null(), "{key}: {value}");
        } else {
            assert!(
                value.is_number(),
                "{key} is missing or not a number: {value}"
            );
        }
    }
    assert!(report["fanout_msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["start_ms"].as_f64().unwrap() > 0.0);
    for key in ["fanout_stolen", "fanout_direct_stolen", "login_stolen"] {
        let share = report[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share), "{key}: {share}");
    }
    let chart = std::fs::read_to_string(svg.path()).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("securechat"),
        "{chart}"
    );
}
