//! `cutover ctl` against a running proxy's admin API: tables for people,
//! JSON for scripts, one clear line and exit 1 when the API refuses.

mod support;

use std::net::SocketAddr;

use support::{get, Backend, Proxy};

async fn ctl(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let url = format!("http://{admin}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["ctl", "--admin", &url])
        .args(args)
        .env_remove("CUTOVER_TOKEN_FILE")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn proxy(token: Option<&std::path::Path>) -> (Proxy, Backend, Backend) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut config = support::blue_green(&blue, &green, 100, 0).admin();
    if let Some(token) = token {
        config = config.admin_token(token);
    }
    (Proxy::with_admin(&config.toml()).await, blue, green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_then_status_shows_the_switch() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();

    let (code, out, err) = ctl(admin, &["weights", "hello", "blue=0", "green=100"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blue=0 green=100"), "{out}");
    assert_eq!(get(proxy.addr(), "x", "/").await.pool(), "green");

    let (code, out, _) = ctl(admin, &["status"]).await;
    assert_eq!(code, 0);
    let header = out.lines().nth(1).unwrap();
    for column in [
        "SERVICE",
        "POOL",
        "FILE",
        "WEIGHT",
        "SET BY",
        "REQ/S",
        "ENDPOINTS",
    ] {
        assert!(header.contains(column), "{out}");
    }
    let green_row = out.lines().find(|l| l.contains("green")).unwrap();
    assert!(green_row.split_whitespace().any(|w| w == "100"), "{out}");
    assert!(out.contains("api "), "who set it: {out}");

    let (code, out, _) = ctl(admin, &["status", "--json"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["services"][0]["weights"]["effective"]["green"], 100);

    let (code, out, _) = ctl(admin, &["reload"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("generation 3"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_one_line_and_exit_1() {
    let (proxy, _blue, _green) = proxy(None).await;
    let admin = proxy.admin.unwrap();
    let (code, out, err) = ctl(admin, &["weights", "hello", "purple=5"]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("400") && err.contains("purple"), "{err}");

    let (code, _, err) = ctl(admin, &["weights", "nope", "blue=5"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("nope"), "{err}");

    // A malformed pair is a usage error, caught before any call.
    let (code, _, err) = ctl(admin, &["weights", "hello", "blue:5"]).await;
    assert_eq!(code, 2, "{err}");

    // Nothing listening: a clear line naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, _, err) = ctl(closed, &["status"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the admin API") && err.contains(&closed.to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (proxy, _blue, _green) = proxy(Some(&token)).await;
    let admin = proxy.admin.unwrap();
    let (code, _, err) = ctl(admin, &["status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let token_arg = token.display().to_string();
    let (code, out, err) = ctl(admin, &["--token-file", &token_arg, "status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hello"));
}
