//! The `cutover` binary end to end: `check` lists every problem of a file
//! with `file:line:col` and exits 1, accepts a valid file (and the repo's
//! commented example) with 0; usage errors exit 2; `run` refuses a missing
//! file with one line naming it; and a running proxy serves, follows its file
//! on SIGHUP, and exits 0 on SIGTERM. The binary runs as a child process; a
//! guard kills it if a test fails. The files `check` reads are literal TOML,
//! as their text (each line and column) is what those tests are about; the
//! proxies `run` starts get theirs from the config builder.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{Backend, Client, Config};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// Upper bound on anything the binary is waited for; generous, for a loaded
/// machine.
const LIMIT: Duration = Duration::from_secs(20);

/// The binary with an environment that cannot leak into the test.
fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("CUTOVER_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to completion (bounded) and returns what it printed.
async fn cutover(args: &[&str]) -> Output {
    tokio::time::timeout(LIMIT, command(args).output())
        .await
        .unwrap_or_else(|_| panic!("cutover {args:?} did not finish within {LIMIT:?}"))
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `text` to `name` in `dir` and returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The 1-based number and the text of the only line of `text` containing
/// `marker`.
fn line_of<'a>(text: &'a str, marker: &str) -> (usize, &'a str) {
    let mut lines = text.lines().enumerate().filter(|(_, l)| l.contains(marker));
    let (index, line) = lines
        .next()
        .unwrap_or_else(|| panic!("no line has {marker:?}"));
    assert!(lines.next().is_none(), "more than one line has {marker:?}");
    (index + 1, line)
}

/// `file:line:col` of `value` on the only line of `text` containing `marker`.
fn position(file: &str, text: &str, marker: &str, value: &str) -> String {
    let (number, line) = line_of(text, marker);
    let byte = line
        .find(value)
        .unwrap_or_else(|| panic!("{value:?} is not on line {line:?}"));
    format!("{file}:{number}:{}", line[..byte].chars().count() + 1)
}

/// Asserts `output` is a failed check whose stderr is exactly `expected`
/// problems, in any order: each a line starting with its position and
/// containing every given word.
fn assert_problems(output: &Output, expected: &[(String, &[&str])]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    for (at, words) in expected {
        let prefix = format!("{at}: ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && words.iter().all(|w| l.contains(w))),
            "no problem at {at} mentioning {words:?} in:\n{err}"
        );
    }
    assert_eq!(lines.len(), expected.len(), "unexpected lines in:\n{err}");
    assert!(!err.contains("Spanned") && !err.contains(" { "), "{err}");
}

const SEMANTIC_PROBLEMS: &str = r#"# Several mistakes a validation pass must report together.
[limits]
max_header_bytes = 10

[[listener]]
name = "web"
bind = "127.0.0.1:8080"
services = ["hello", "nosuch"]

[[service]]
name = "hello"

  [[service.pool]]
  name = "blue"
  weight = 0
  endpoints = ["10.0.0.10"]

  [[service.pool]]
  name = "blue"                # the same name again
  weight = 0
  endpoints = ["10.0.0.11:80"]
"#;

#[tokio::test]
async fn check_reports_every_semantic_problem_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let text = SEMANTIC_PROBLEMS;
    let file = write(dir.path(), "cutover.toml", text);
    let output = cutover(&["check", "-c", &file]).await;
    let at = |marker, value| position(&file, text, marker, value);
    assert_problems(
        &output,
        &[
            (at("max_header_bytes", "10"), &["max_header_bytes", "1024"]),
            (
                at("services =", "\"nosuch\""),
                &["unknown service", "nosuch"],
            ),
            (
                at("name = \"hello\"", "\"hello\""),
                &["hello", "weight > 0"],
            ),
            (
                at("10.0.0.10\"", "\"10.0.0.10\""),
                &["10.0.0.10", "host:port"],
            ),
            (
                at("same name again", "\"blue\""),
                &["duplicate pool", "blue"],
            ),
        ],
    );
    assert!(output.stdout.is_empty());
}

const TLS_PROBLEMS: &str = r#"# TLS settings in the wrong places, or malformed.
[[listener]]
name = "web"
bind = "127.0.0.1:8443"
services = ["hello"]
tls = { certs = [{ cert = "a.crt", key = "a.key" }], alpn = ["h3"], min_version = "1.1" }

[[listener]]
name = "plain"
bind = "127.0.0.1:8080"
services = ["hello"]
redirect_https = true
tls = { certs = [] }

[[listener]]
name = "l4"
bind = "127.0.0.1:9000"
protocol = "tcp"
services = ["raw"]
tls = { certs = [{ cert = "a.crt", key = "a.key" }] }

[[service]]
name = "hello"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["10.0.0.10:443"]
  tls = { cert = "client.crt" }

  [[service.pool]]
  name = "green"
  weight = 0
  endpoints = ["10.0.0.11:443"]
  host = "under_score!"
  tls = {}

[[service]]
name = "raw"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["10.0.0.10:5432"]
  protocol = "h2"
"#;

#[tokio::test]
async fn check_reports_tls_settings_in_the_wrong_place_with_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let text = TLS_PROBLEMS;
    let file = write(dir.path(), "cutover.toml", text);
    let output = cutover(&["check", "-c", &file]).await;
    let at = |marker, value| position(&file, text, marker, value);
    assert_problems(
        &output,
        &[
            (at("\"h3\"", "\"h3\""), &["alpn", "h3"]),
            (at("\"1.1\"", "\"1.1\""), &["min_version", "1.1"]),
            (
                at("redirect_https", "true"),
                &["redirect_https", "plain http"],
            ),
            (at("certs = []", "[]"), &["no certs"]),
            (
                at(
                    "tls = { certs = [{ cert = \"a.crt\", key = \"a.key\" }] }",
                    "{",
                ),
                &["l4", "tcp listener passes TLS through"],
            ),
            (at("client.crt", "{"), &["both cert and key"]),
            (
                at("under_score!", "\"under_score!\""),
                &["TLS can verify", "sni"],
            ),
            (at("\"h2\"", "\"h2\""), &["protocol", "tcp listener"]),
        ],
    );
}

const SHIFT_PROBLEMS: &str = r#"# Shift defaults and webhooks that cannot work.
[admin]
listen = "127.0.0.1:9901"
audit_log = "/var/log/cutover/audit.jsonl"

[[admin.webhook]]
url = "ftp://hooks.example.com/x"
events = ["shift_rollback", "shift_exploded"]

[[admin.webhook]]
url = "http://hooks.example.com/ok"
retries = 99

[[listener]]
name = "web"
bind = "127.0.0.1:8080"
services = ["hello"]

[[service]]
name = "hello"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["10.0.0.10:80"]

  [service.shift]
  steps = [50, 25, 150]
  every = "10ms"
  max_error_rate = 1.5
"#;

#[tokio::test]
async fn check_reports_shift_and_webhook_problems_at_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = SHIFT_PROBLEMS;
    let file = write(dir.path(), "cutover.toml", text);
    let output = cutover(&["check", "-c", &file]).await;
    let at = |marker, value| position(&file, text, marker, value);
    // `every` has no place of its own: the table's header has it.
    let table = at("[service.shift]", "[");
    assert_problems(
        &output,
        &[
            (
                at("ftp://", "\"ftp://"),
                &["webhook url", "http:// or https://"],
            ),
            (
                at("shift_exploded", "\"shift_exploded\""),
                &["shift_exploded", "shift_rollback, shift_abort"],
            ),
            (at("retries = 99", "99"), &["retries is 99", "at most 10"]),
            (at("steps = [50", "["), &["step 150", "1 to 100"]),
            (at("steps = [50", "["), &["strictly ascend"]),
            (table, &["every is 10ms", "from 100ms"]),
            (
                at("max_error_rate", "1.5"),
                &["max_error_rate is 1.5", "0 to 1"],
            ),
        ],
    );
}

#[tokio::test]
async fn check_reads_the_tls_files_and_names_each_one_that_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tcp::TestCa::new();
    let (cert, key) = ca.issue_files(dir.path(), "web", &["hello.test"]);
    let (_, other_key) = ca.issue_files(dir.path(), "other", &["other.test"]);
    let missing = dir.path().join("missing.crt");
    let text = format!(
        r#"[[listener]]
name = "web"
bind = "127.0.0.1:8443"
services = ["hello"]
tls = {{ certs = [{{ cert = "{cert}", key = "{other_key}" }}, {{ cert = "{missing}", key = "{key}" }}] }}

[[service]]
name = "hello"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["10.0.0.10:443"]
  tls = {{ ca_file = "{not_pem}" }}
"#,
        cert = cert.display(),
        other_key = other_key.display(),
        missing = missing.display(),
        key = key.display(),
        not_pem = key.display(),
    );
    let file = write(dir.path(), "cutover.toml", &text);
    let output = cutover(&["check", "-c", &file]).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("other.key") && err.contains("KeyMismatch"),
        "{err}"
    );
    // The first problem of a listener is reported; the pool's too.
    assert!(
        err.contains("pool \"blue\" of service \"hello\" tls ca_file"),
        "{err}"
    );
    assert!(err.contains("holds no PEM certificate"), "{err}");

    // Fixed, it passes.
    let good = text
        .replace(&other_key.display().to_string(), &key.display().to_string())
        .replace(&missing.display().to_string(), &cert.display().to_string())
        .replace(
            &format!("ca_file = \"{}\"", key.display()),
            &format!("ca_file = \"{}\"", ca.write_ca(dir.path()).display()),
        );
    let file = write(dir.path(), "cutover.toml", &good);
    let output = cutover(&["check", "-c", &file]).await;
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn check_reports_an_unknown_key_in_a_later_table_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[[listener]]
name = "web"
bind = "127.0.0.1:8080"
services = ["hello"]

[[service]]
name = "hello"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["10.0.0.10:80"]

  [[service.pool]]
  name = "green"
  wieght = 0
  endpoints = ["10.0.1.10:80"]
"#;
    let file = write(dir.path(), "cutover.toml", text);
    let output = cutover(&["check", "-c", &file]).await;
    assert_problems(
        &output,
        &[(
            position(&file, text, "wieght", "wieght"),
            &["unknown field", "wieght", "weight"],
        )],
    );
}

#[tokio::test]
async fn check_reports_a_syntax_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[listener]]\nname = \"web\"\nbind = 127.0.0.1:8080\nservices = [\"hello\"]\n";
    let file = write(dir.path(), "cutover.toml", text);
    let output = cutover(&["check", "-c", &file]).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    // The column is the parser's to choose; the line is not.
    let (line, _) = line_of(text, "bind");
    assert_eq!(err.lines().count(), 1, "{err}");
    let rest = err
        .strip_prefix(&format!("{file}:{line}:"))
        .unwrap_or_else(|| panic!("not at {file}:{line}: {err}"));
    let (col, message) = rest.split_once(": ").unwrap();
    assert!(col.parse::<usize>().is_ok_and(|c| c >= 1), "{err}");
    assert!(!message.trim().is_empty(), "{err}");
}

const VALID: &str = r#"[[listener]]
name = "web"
bind = "127.0.0.1:8080"
services = ["hello"]

[[service]]
name = "hello"

  [[service.pool]]
  name = "blue"
  weight = 100
  endpoints = ["10.0.0.10:80"]
"#;

#[tokio::test]
async fn check_accepts_a_valid_file_by_flag_env_and_default_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "cutover.toml", VALID);

    let output = cutover(&["check", "-c", &file]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains(&file));

    let output = tokio::time::timeout(
        LIMIT,
        command(&["check"]).env("CUTOVER_CONFIG", &file).output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    // Default: ./cutover.toml.
    let output = tokio::time::timeout(LIMIT, command(&["check"]).current_dir(&dir).output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[tokio::test]
async fn check_accepts_the_repository_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cutover.toml");
    assert!(example.exists(), "{} is missing", example.display());
    let output = cutover(&["check", "-c", example.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["check", "--frobnicate"],
        &["run", "--config"],
        &[],
    ] {
        let output = cutover(args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("--help"), "{args:?}");
    }
}

#[tokio::test]
async fn run_with_a_missing_file_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    for sub in ["run", "check"] {
        let output = cutover(&[sub, "-c", missing]).await;
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{sub}: {err}");
        assert!(
            err.contains(missing) && err.contains("cannot read"),
            "{sub}: {err}"
        );
        assert!(
            !err.contains(" { ") && !err.contains("Os {"),
            "{sub}: {err}"
        );
    }
}

#[tokio::test]
async fn run_with_a_missing_file_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let output = cutover(&["run", "-c", missing.to_str().unwrap()]).await;
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// A `cutover run` child process, killed when dropped.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (a `kill` name like "HUP") to the process.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits (bounded) for the process to exit; its exit code.
    async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// What `cutover run` is started with: one worker thread, the admin API
/// on an ephemeral port, and blue/green behind `web` on `port`.
fn run_config(port: u16, blue: &Backend, green: &Backend, wb: i64, wg: i64) -> String {
    Config::new()
        .threads(1)
        .admin()
        .listener_at("web", format!("127.0.0.1:{port}"))
        .service("hello", |s| {
            s.pool("blue", wb, &[blue.addr])
                .pool("green", wg, &[green.addr])
        })
        .toml()
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `cutover run -c path` on a free port, writing `config(port)` to
/// `real` first; retries on another port if the one picked was taken in the
/// meantime. Returns once the proxy accepts connections.
async fn start(path: &Path, real: &Path, config: impl Fn(u16) -> String) -> (Running, SocketAddr) {
    for attempt in 0..5 {
        let port = free_port();
        std::fs::write(real, config(port)).unwrap();
        // Beside the real file, out of the watched directory.
        let log = real.with_file_name(format!("cutover-{attempt}.log"));
        let child = std::process::Command::new(BIN)
            .args(["run", "-c", path.to_str().unwrap()])
            .env_remove("CUTOVER_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut running = Running { child, log };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + LIMIT;
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return (running, addr);
            }
            if let Some(status) = running.child.try_wait().unwrap() {
                let log = running.log();
                assert!(log.contains("cannot bind"), "exited with {status}:\n{log}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not listening on {addr} within {LIMIT:?}; log:\n{}",
                running.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("no free port found in 5 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_reloads_on_sighup_and_exits_0_on_sigterm() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    // The proxy reads `cutover.toml`, a symlink to a file in another
    // directory: the file watcher (on the link's directory) does not see the
    // edit below, so only SIGHUP can make the proxy read it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let real = dir.path().join("real/cutover.toml");
    let path = dir.path().join("cutover.toml");
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let (mut proxy, addr) =
        start(&path, &real, |port| run_config(port, &blue, &green, 100, 0)).await;

    let mut client = Client::connect(addr).await;
    for _ in 0..5 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status, reply.pool()), (StatusCode::OK, "blue"));
    }

    let port = addr.port();
    std::fs::write(&real, run_config(port, &blue, &green, 0, 100)).unwrap();
    let hup = Instant::now();
    proxy.signal("HUP");
    loop {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", proxy.log());
        if reply.pool() == "green" {
            break;
        }
        assert!(
            hup.elapsed() < LIMIT,
            "still blue {LIMIT:?} after SIGHUP; log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("SIGHUP took effect after {:?}", hup.elapsed());
    // The same keep-alive connection follows the new weights, on every request.
    for _ in 0..20 {
        let reply = client.get("/", &[]).await.unwrap();
        assert_eq!((reply.status, reply.pool()), (StatusCode::OK, "green"));
    }

    let term = Instant::now();
    proxy.signal("TERM");
    let code = proxy.exit_code(Duration::from_secs(10)).await;
    println!("exited {:?} after SIGTERM", term.elapsed());
    assert_eq!(code, Some(0), "log:\n{}", proxy.log());
}
