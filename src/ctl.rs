//! `cutover ctl`: a thin client of the admin API. Human-readable tables by
//! default, the API's JSON with `--json`; an API error is printed as one line
//! and exits 1.

use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

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
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Services, pools, weights, endpoints and traffic.
    Status,
    /// Set pool weights of a service: `weights hello blue=0 green=100`.
    Weights {
        service: String,
        /// POOL=WEIGHT pairs; pools not named keep their weight.
        #[arg(required = true, value_parser = parse_pair)]
        weights: Vec<(String, u64)>,
    },
    /// Take a pool (`drain hello blue`) or one endpoint
    /// (`drain hello blue/10.0.0.10:80`) out of rotation; in-flight work
    /// finishes within the service's drain_timeout.
    Drain { service: String, target: String },
    /// Put a drained pool or endpoint back in rotation.
    Undrain { service: String, target: String },
    /// Re-read the configuration file now.
    Reload,
}

fn parse_pair(text: &str) -> Result<(String, u64), String> {
    let (pool, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not POOL=WEIGHT"))?;
    let weight = weight
        .parse()
        .map_err(|_| format!("weight {weight:?} of pool {pool:?} is not a whole number"))?;
    Ok((pool.to_owned(), weight))
}

pub fn main(args: CtlArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(args))
}

async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read token file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let api = Api {
        base: args.admin.trim_end_matches('/').to_owned(),
        token,
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let draining = matches!(args.command, CtlCommand::Drain { .. });
    match args.command {
        CtlCommand::Status => {
            let status = api.call(Method::GET, "/v1/status", None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render_status(&status));
            }
        }
        CtlCommand::Weights { service, weights } => {
            let body: serde_json::Map<String, Value> = weights
                .into_iter()
                .map(|(p, w)| (p, Value::from(w)))
                .collect();
            let path = format!("/v1/services/{service}/weights");
            let reply = api
                .call(Method::PUT, &path, Some(Value::Object(body)))
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                let weights = &reply["service"]["weights"]["effective"];
                println!(
                    "{service}: weights {} (generation {})",
                    pairs(weights),
                    reply["generation"]
                );
            }
        }
        CtlCommand::Drain { service, target } | CtlCommand::Undrain { service, target } => {
            let state = if draining { "drain" } else { "ready" };
            let enc = |s: &str| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            let path = match target.split_once('/') {
                Some((pool, endpoint)) => format!(
                    "/v1/services/{}/pools/{}/endpoints/{}/state",
                    enc(&service),
                    enc(pool),
                    enc(endpoint)
                ),
                None => format!(
                    "/v1/services/{}/pools/{}/state",
                    enc(&service),
                    enc(&target)
                ),
            };
            let body = serde_json::json!({ "state": state });
            let reply = api.call(Method::PUT, &path, Some(body)).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                println!(
                    "{service} {target}: {} (generation {})",
                    if state == "drain" {
                        "draining"
                    } else {
                        "ready"
                    },
                    reply["generation"]
                );
            }
        }
        CtlCommand::Reload => {
            let reply = api.call(Method::POST, "/v1/reload", None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else {
                println!("reloaded: generation {}", reply["generation"]);
            }
        }
    }
    Ok(())
}

struct Api {
    base: String,
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(value) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&value)?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .with_context(|| format!("{url:?} is not a valid admin URL"))?;
        let resp = self
            .client
            .request(req)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("the admin API at {} broke off its answer", self.base))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = value["error"].as_str().unwrap_or("error");
            let detail = value["detail"].as_str().unwrap_or("");
            bail!("{} {error}: {detail}", status.as_u16());
        }
        Ok(value)
    }
}

/// An endpoint as `address up`, or `address DOWN (last error, since T)`,
/// with any passive ejection after it.
fn endpoint_cell(e: &Value) -> String {
    let address = e["address"].as_str().unwrap_or("?");
    let mut cell = if e["healthy"].as_bool() == Some(true) {
        format!("{address} up")
    } else if e["checked"].as_bool() == Some(false) {
        format!("{address} unchecked")
    } else {
        format!(
            "{address} DOWN ({}, since {})",
            e["last_error"].as_str().unwrap_or("failing checks"),
            e["since"].as_str().unwrap_or("?")
        )
    };
    if let Some(seconds) = e["ejected_for_seconds"].as_f64() {
        cell.push_str(&format!(" EJECTED {seconds:.0}s more"));
    }
    cell
}

/// `{"blue":0,"green":100}` as `blue=0 green=100`.
fn pairs(weights: &Value) -> String {
    weights
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn render_status(status: &Value) -> String {
    let mut out = format!(
        "generation {}  config {}  {}\n",
        status["generation"],
        status["config_file"].as_str().unwrap_or("-"),
        match status["last_reload_error"].as_str() {
            Some(e) => format!("LAST RELOAD FAILED: {e}"),
            None => "last reload ok".to_owned(),
        }
    );
    if status["read_only"].as_bool() == Some(true) {
        out.push_str("read-only: weights come from the file only\n");
    }
    let mut rows = vec![[
        "SERVICE",
        "POOL",
        "FILE",
        "WEIGHT",
        "SET BY",
        "REQ/S",
        "REQUESTS",
        "5XX",
        "UPSTREAM CONNS",
        "ENDPOINTS",
    ]
    .map(String::from)];
    for service in status["services"].as_array().into_iter().flatten() {
        if let Some(serving @ ("failover" | "down")) = service["serving"].as_str() {
            out.push_str(&format!(
                "service {}: {}\n",
                service["name"].as_str().unwrap_or(""),
                if serving == "down" {
                    "DOWN: no healthy endpoint, answering 503"
                } else {
                    "FAILOVER: every weighted pool is down, serving from a weight-0 pool"
                }
            ));
        }
        let source = format!(
            "{} {}",
            service["override"]["source"].as_str().unwrap_or("-"),
            service["override"]["set_at"].as_str().unwrap_or("")
        );
        for (i, pool) in service["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let endpoints: Vec<String> = pool["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(endpoint_cell)
                .collect();
            rows.push([
                if i == 0 {
                    service["name"].as_str().unwrap_or("")
                } else {
                    ""
                }
                .to_owned(),
                pool["name"].as_str().unwrap_or("").to_owned(),
                pool["file_weight"].to_string(),
                pool["weight"].to_string(),
                if i == 0 {
                    source.clone()
                } else {
                    String::new()
                },
                format!("{:.1}", pool["requests_per_second"].as_f64().unwrap_or(0.0)),
                pool["requests_total"].to_string(),
                pool["errors_5xx_total"].to_string(),
                pool["upstream_connections_active"].to_string(),
                endpoints.join(", "),
            ]);
        }
    }
    let notes = rotation_notes(status);
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&notes);
    out
}

/// One line per pool out of rotation: draining, or safe to remove.
fn rotation_notes(status: &Value) -> String {
    let mut out = String::new();
    for service in status["services"].as_array().into_iter().flatten() {
        for pool in service["pools"].as_array().into_iter().flatten() {
            if pool["in_rotation"].as_bool() != Some(false) {
                continue;
            }
            let name = format!(
                "{}/{}",
                service["name"].as_str().unwrap_or(""),
                pool["name"].as_str().unwrap_or("")
            );
            let idle = match pool["last_served"].as_str() {
                Some(t) => format!("idle since {t}"),
                None => "never served".to_owned(),
            };
            if pool["safe_to_remove"].as_bool() == Some(true) {
                out.push_str(&format!("{name}: drained, {idle} — safe to remove\n"));
            } else {
                out.push_str(&format!(
                    "{name}: draining — {} in flight, {} upstream connections, last served {}; not yet safe to remove\n",
                    pool["in_flight"],
                    pool["upstream_connections_active"],
                    pool["last_served"].as_str().unwrap_or("never"),
                ));
            }
        }
    }
    out
}
