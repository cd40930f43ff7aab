//! `cutover ctl`: a thin client of the admin API. Human-readable tables by
//! default, the API's JSON with `--json`; an API error is printed as one
//! line and exits 1, a usage error exits 2. This file owns the command line
//! and what each subcommand sends; `api` makes the calls, `render` draws
//! the answers, `watch` follows shifts until they end.

mod api;
mod render;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use http::Method;
use serde_json::{json, Map, Value};

use api::{segment, Api};

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Admin API base URL.
    #[arg(long, env = "CUTOVER_ADMIN", default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// File holding the admin bearer token.
    #[arg(long, env = "CUTOVER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Longest wait for each answer of the admin API.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Make the change only if the configuration generation in force is
    /// still N (sent as `If-Match: "N"`); for weights, drain, undrain,
    /// shift and abort.
    #[arg(long, global = true, value_name = "N")]
    if_generation: Option<u64>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Services, pools, weights, endpoints, traffic and shifts.
    Status {
        /// Redraw every second; follow the shifts running now until they
        /// end (exit 0 when all are done, 1 otherwise).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Set pool weights of a service: `weights hello blue=0 green=100`.
    Weights {
        service: String,
        /// POOL=WEIGHT pairs; pools not named keep their weight.
        #[arg(required = true, value_parser = parse_pair)]
        weights: Vec<(String, u64)>,
        /// Put the previous weights back after this long unless the
        /// service's weights are changed again before.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        revert_after: Option<Duration>,
    },
    /// Take a pool (`drain hello blue`) or one endpoint
    /// (`drain hello blue/10.0.0.10:80`) out of rotation; in-flight work
    /// finishes within the service's drain_timeout.
    Drain { service: String, target: String },
    /// Put a drained pool or endpoint back in rotation.
    Undrain { service: String, target: String },
    /// Re-read the configuration file now.
    Reload,
    /// Move a service's traffic to a pool step by step, judging each step;
    /// options not given come from the service's [service.shift].
    Shift(ShiftArgs),
    /// Stop a service's running shift and roll back to the weights before it.
    Abort { service: String },
    /// Recent changes: weights, drains, shifts, reloads, health.
    Events {
        /// How many of the latest events (the API's default is 100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: Option<u32>,
    },
}

impl CtlCommand {
    /// Whether the command follows the status with `--watch`.
    fn watches(&self) -> bool {
        matches!(self, Self::Status { watch: true }) || matches!(self, Self::Shift(s) if s.watch)
    }

    /// Whether the call is a change the server checks against `If-Match`.
    fn is_conditional(&self) -> bool {
        matches!(
            self,
            Self::Weights { .. }
                | Self::Drain { .. }
                | Self::Undrain { .. }
                | Self::Shift(_)
                | Self::Abort { .. }
        )
    }
}

#[derive(Debug, clap::Args)]
struct ShiftArgs {
    service: String,
    /// The pool the traffic moves to.
    #[arg(long, value_name = "POOL")]
    to: String,
    /// The target's share at each step, in percent: 10,25,50,100.
    #[arg(long, value_name = "PERCENTS", value_parser = parse_steps)]
    steps: Option<Steps>,
    /// How long each step is held before it is judged.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    every: Option<Duration>,
    /// Largest share of the target's requests that may fail in a step
    /// (0.01 is 1%).
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    max_error_rate: Option<f64>,
    /// Largest p99 latency of the target in a step.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_p99: Option<Duration>,
    /// A step with fewer requests on the target is extended, not judged.
    #[arg(long, value_name = "N")]
    min_requests: Option<u64>,
    /// How many times a step may be extended before the shift rolls back.
    #[arg(long, value_name = "N")]
    max_extensions: Option<u32>,
    /// Follow the shift until it ends: exit 0 when done, 1 otherwise.
    #[arg(long, conflicts_with = "json")]
    watch: bool,
}

impl ShiftArgs {
    /// The request body: `to`, and only the options given, so the server
    /// fills the rest from `[service.shift]`.
    fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("to".into(), json!(self.to));
        if let Some(Steps(steps)) = &self.steps {
            body.insert("steps".into(), json!(steps));
        }
        if let Some(every) = self.every {
            body.insert("every".into(), json!(duration_text(every)));
        }
        if let Some(rate) = self.max_error_rate {
            body.insert("max_error_rate".into(), json!(rate));
        }
        if let Some(p99) = self.max_p99 {
            body.insert("max_p99".into(), json!(duration_text(p99)));
        }
        if let Some(n) = self.min_requests {
            body.insert("min_requests".into(), json!(n));
        }
        if let Some(n) = self.max_extensions {
            body.insert("max_extensions".into(), json!(n));
        }
        Value::Object(body)
    }
}

/// Step percentages, as `--steps` lists them.
#[derive(Debug, Clone, PartialEq)]
struct Steps(Vec<u32>);

fn parse_pair(text: &str) -> Result<(String, u64), String> {
    let (pool, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not POOL=WEIGHT"))?;
    let weight = weight
        .parse()
        .map_err(|_| format!("weight {weight:?} of pool {pool:?} is not a whole number"))?;
    Ok((pool.to_owned(), weight))
}

/// `10,25,50,100`: whole numbers, comma-separated. Their range and order
/// are the server's to check, with the rest of the policy.
fn parse_steps(text: &str) -> Result<Steps, String> {
    text.split(',')
        .map(|step| {
            let step = step.trim();
            step.parse().map_err(|_| {
                format!("step {step:?} is not a whole percentage; list them like 10,25,50,100")
            })
        })
        .collect::<Result<_, _>>()
        .map(Steps)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 30s, 500ms or 2m: {e}"))
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if share.is_finite() => Ok(share),
        _ => Err(format!(
            "{text:?} is not a number; give a share from 0 to 1, like 0.01 for 1%"
        )),
    }
}

/// A duration as the API reads it: `30s`, `500ms`, `1m 30s`.
fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn main(args: CtlArgs) -> anyhow::Result<ExitCode> {
    if args.if_generation.is_some() && !args.command.is_conditional() {
        clap::Error::raw(
            clap::error::ErrorKind::ArgumentConflict,
            "--if-generation guards a change: use it with weights, drain, undrain, shift or abort\n",
        )
        .exit();
    }
    if args.json && args.command.watches() {
        clap::Error::raw(
            clap::error::ErrorKind::ArgumentConflict,
            "the argument '--watch' cannot be used with '--json'\n",
        )
        .exit();
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args))
}

async fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read token file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let api = Api::new(&args.admin, token, args.if_generation, args.timeout);
    let json = args.json;
    let (reply, text) = match args.command {
        CtlCommand::Status { watch: true } => {
            return watch::run(&api, watch::Target::RunningNow).await
        }
        CtlCommand::Status { watch: false } => {
            let status = api.get("/v1/status").await?;
            return print(json, &status, render::status(&status));
        }
        CtlCommand::Weights {
            service,
            weights,
            revert_after,
        } => {
            let mut body: Map<String, Value> = weights
                .into_iter()
                .map(|(p, w)| (p, Value::from(w)))
                .collect();
            if let Some(after) = revert_after {
                body.insert("revert_after".into(), json!(duration_text(after)));
            }
            let path = format!("/v1/services/{}/weights", segment(&service));
            let reply = api
                .change(Method::PUT, &path, Some(Value::Object(body)))
                .await?;
            let text = weights_set(&service, revert_after.is_some(), &reply);
            (reply, text)
        }
        CtlCommand::Drain { service, target } => {
            let reply = set_state(&api, &service, &target, "drain").await?;
            let text = format!(
                "{service} {target}: draining (generation {})",
                reply["generation"]
            );
            (reply, text)
        }
        CtlCommand::Undrain { service, target } => {
            let reply = set_state(&api, &service, &target, "ready").await?;
            let text = format!(
                "{service} {target}: ready (generation {})",
                reply["generation"]
            );
            (reply, text)
        }
        CtlCommand::Reload => {
            let reply = api.request(Method::POST, "/v1/reload", None, false).await?;
            let text = format!("reloaded: generation {}\n", reply["generation"]);
            return print(json, &reply, text);
        }
        CtlCommand::Shift(shift) => {
            let path = format!("/v1/services/{}/shift", segment(&shift.service));
            let reply = api.change(Method::POST, &path, Some(shift.body())).await?;
            if shift.watch {
                println!("{}", shift_started(&shift.service, &reply));
                let watched = watch::Watched::of(&reply["service"]).with_context(|| {
                    format!(
                        "the admin API's answer describes no shift of {} to watch",
                        shift.service
                    )
                })?;
                return watch::run(&api, watch::Target::Shifts(vec![watched])).await;
            }
            let text = shift_started(&shift.service, &reply);
            (reply, text)
        }
        CtlCommand::Abort { service } => {
            let path = format!("/v1/services/{}/shift", segment(&service));
            let reply = api.change(Method::DELETE, &path, None).await?;
            let text = format!(
                "{service}: shift aborted, weights back to {} (generation {})",
                render::pairs(&reply["service"]["weights"]["effective"]),
                reply["generation"]
            );
            (reply, text)
        }
        CtlCommand::Events { limit } => {
            let path = match limit {
                Some(n) => format!("/v1/events?limit={n}"),
                None => "/v1/events".to_owned(),
            };
            let reply = api.get(&path).await?;
            return print(json, &reply, render::events(&reply));
        }
    };
    print(json, &reply, format!("{text}\n"))
}

/// Prints the API's JSON or `text`.
fn print(json: bool, reply: &Value, text: String) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(reply)?);
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `PUT` a pool's (`blue`) or an endpoint's (`blue/10.0.0.10:80`) state.
async fn set_state(api: &Api, service: &str, target: &str, state: &str) -> anyhow::Result<Value> {
    let path = match target.split_once('/') {
        Some((pool, endpoint)) => format!(
            "/v1/services/{}/pools/{}/endpoints/{}/state",
            segment(service),
            segment(pool),
            segment(endpoint)
        ),
        None => format!(
            "/v1/services/{}/pools/{}/state",
            segment(service),
            segment(target)
        ),
    };
    api.change(Method::PUT, &path, Some(json!({ "state": state })))
        .await
}

/// `hello: weights blue=0 green=100 (generation 12)`, and when they revert.
fn weights_set(service: &str, reverting: bool, reply: &Value) -> String {
    let over = &reply["service"]["override"];
    let mut line = format!(
        "{service}: weights {} (generation {})",
        render::pairs(&reply["service"]["weights"]["effective"]),
        reply["generation"]
    );
    match over["revert_at"].as_str() {
        Some(at) => line.push_str(&format!(
            ", reverting to {} at {at} unless changed before",
            render::pairs(&over["revert_to"])
        )),
        None if reverting => line.push_str(", but the admin API did not say when they revert"),
        None => {}
    }
    line
}

/// `hello: shifting to green through 10%,25%,50%,100%, 30s per step
/// (generation 12)`, from the policy the server put in force.
fn shift_started(service: &str, reply: &Value) -> String {
    let shift = &reply["service"]["shift"];
    let steps: Vec<String> = shift["policy"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("{s}%"))
        .collect();
    format!(
        "{service}: shifting to {} through {}, {} per step (generation {})",
        shift["to"].as_str().unwrap_or("?"),
        steps.join(","),
        shift["policy"]["every"].as_str().unwrap_or("?"),
        reply["generation"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Line {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        Line::try_parse_from(std::iter::once("ctl").chain(args.iter().copied())).map(|l| l.ctl)
    }

    #[test]
    fn shift_sends_only_the_options_given() {
        let args = parse(&["shift", "hello", "--to", "green"]).unwrap();
        let CtlCommand::Shift(shift) = args.command else {
            panic!("{:?}", args.command)
        };
        assert_eq!(shift.body(), json!({"to": "green"}));

        let args = parse(&[
            "shift",
            "hello",
            "--to",
            "green",
            "--steps",
            "10, 25,50,100",
            "--every",
            "90s",
            "--max-error-rate",
            "0.05",
            "--max-p99",
            "0.5s",
            "--min-requests",
            "5",
            "--max-extensions",
            "3",
        ])
        .unwrap();
        let CtlCommand::Shift(shift) = args.command else {
            panic!("{:?}", args.command)
        };
        assert_eq!(
            shift.body(),
            json!({"to": "green", "steps": [10, 25, 50, 100], "every": "1m 30s",
                   "max_error_rate": 0.05, "max_p99": "500ms", "min_requests": 5,
                   "max_extensions": 3})
        );
    }

    #[test]
    fn malformed_options_are_usage_errors_naming_the_value() {
        for (args, names) in [
            (
                &["shift", "hello", "--to", "g", "--steps", "10,,50"][..],
                "\"\"",
            ),
            (
                &["shift", "hello", "--to", "g", "--steps", "ten"],
                "\"ten\"",
            ),
            (
                &["shift", "hello", "--to", "g", "--every", "soon"],
                "\"soon\"",
            ),
            (
                &["shift", "hello", "--to", "g", "--max-error-rate", "1%"],
                "\"1%\"",
            ),
            (
                &["shift", "hello", "--to", "g", "--max-error-rate", "NaN"],
                "\"NaN\"",
            ),
            (&["shift", "hello"], "--to"),
            (
                &["weights", "hello", "blue=1", "--revert-after", "later"],
                "\"later\"",
            ),
            (&["events", "--limit", "501"], "501"),
            (&["--if-generation", "-1", "abort", "hello"], "-1"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(names), "{args:?}: {e}");
        }
    }

    #[test]
    fn if_generation_and_timeout_are_global() {
        let args = parse(&["weights", "hello", "blue=1", "--if-generation", "12"]).unwrap();
        assert_eq!(args.if_generation, Some(12));
        assert!(args.command.is_conditional());
        assert_eq!(args.timeout, Duration::from_secs(10));
        let args = parse(&["--timeout", "250ms", "--if-generation", "3", "status"]).unwrap();
        assert_eq!(args.timeout, Duration::from_millis(250));
        assert!(!args.command.is_conditional(), "status changes nothing");
    }

    #[test]
    fn the_started_line_names_the_policy_in_force() {
        let reply = json!({"generation": 12, "service": {"shift": {"to": "green",
            "policy": {"steps": [10, 25, 50, 100], "every": "30s"}}}});
        assert_eq!(
            shift_started("hello", &reply),
            "hello: shifting to green through 10%,25%,50%,100%, 30s per step (generation 12)"
        );
    }

    #[test]
    fn the_weights_line_says_when_they_revert() {
        let reply = json!({"generation": 5, "service": {
            "weights": {"effective": {"blue": 0, "green": 100}},
            "override": {"revert_at": "2026-12-02T17:10:00Z", "revert_to": {"blue": 100, "green": 0}}}});
        assert_eq!(
            weights_set("hello", true, &reply),
            "hello: weights blue=0 green=100 (generation 5), reverting to blue=100 green=0 \
             at 2026-12-02T17:10:00Z unless changed before"
        );
    }
}
