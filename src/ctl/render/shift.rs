//! A shift as `ctl` shows it: the status note of a service whose shift is
//! not idle, the note of a pending revert, and the views `--watch` draws
//! (a block per service on a terminal, one line on a log). Pure text from
//! the service's status object; the watching itself is `watch`'s.

use serde_json::Value;

use super::{pairs, text};

/// A share as a percentage: `0.0123` is `1.23%`.
fn percent(rate: &Value) -> String {
    match rate.as_f64() {
        Some(rate) => format!("{:.2}%", rate * 100.0),
        None => "-".to_owned(),
    }
}

/// Seconds as people read a latency: `0.0021` is `2.1ms`, `1.5` is `1.50s`.
fn seconds(value: &Value) -> String {
    match value.as_f64() {
        Some(s) if s < 0.01 => format!("{:.1}ms", s * 1000.0),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
        None => "-".to_owned(),
    }
}

/// Time left, rounded up to whole seconds: `12.2` is `13s`.
fn time_left(value: &Value) -> String {
    match value.as_f64() {
        Some(s) => format!("{}s", s.max(0.0).ceil()),
        None => "-".to_owned(),
    }
}

/// `hello: shift to green running, step 2/4 (25%)`: the outcome in place
/// of the state once ended.
fn headline(service: &Value) -> String {
    let shift = &service["shift"];
    let word = shift["outcome"]
        .as_str()
        .or(shift["state"].as_str())
        .unwrap_or("?");
    let steps = shift["policy"]["steps"].as_array().map_or(0, Vec::len);
    format!(
        "{}: shift to {} {word}, step {}/{steps} ({}%)",
        text(&service["name"]),
        text(&shift["to"]),
        shift["step"],
        shift["percent"],
    )
}

fn is_running(service: &Value) -> bool {
    let shift = &service["shift"];
    shift["state"].as_str() == Some("running") && shift["outcome"].is_null()
}

/// The status line of a service's shift, unless it is idle: its step and
/// next judgement while running, its end and why once ended.
pub fn shift_note(service: &Value) -> Option<String> {
    if service["shift"]["state"]
        .as_str()
        .is_none_or(|s| s == "idle")
    {
        return None;
    }
    Some(ended_or_next(service))
}

/// The headline, then the next judgement (running) or when and why it
/// ended.
fn ended_or_next(service: &Value) -> String {
    let shift = &service["shift"];
    let mut line = headline(service);
    if is_running(service) {
        line.push_str(&format!(
            ", next judgement in {}",
            time_left(&shift["next_judgement_in_seconds"])
        ));
    } else {
        if let Some(at) = shift["ended_at"].as_str() {
            line.push_str(&format!(", ended {at}"));
        }
        if let Some(reason) = shift["reason"].as_str() {
            line.push_str(&format!(": {reason}"));
        }
    }
    line
}

/// The status line of an override with a dead-man switch.
pub fn revert_note(service: &Value) -> Option<String> {
    let over = &service["override"];
    let at = over["revert_at"].as_str()?;
    Some(format!(
        "{}: weights revert to {} at {at} unless changed before",
        text(&service["name"]),
        match pairs(&over["revert_to"]) {
            p if p.is_empty() => "the previous ones".to_owned(),
            p => p,
        }
    ))
}

/// A judged step: `pass: 120 requests, errors 0.00%, p99 2.0ms`, and the
/// verdict's reason.
fn judged(step: &Value) -> String {
    let mut line = format!(
        "{}: {} requests, errors {}, p99 {}",
        text(&step["verdict"]),
        step["requests"],
        percent(&step["error_rate"]),
        seconds(&step["p99_seconds"]),
    );
    if let Some(reason) = step["reason"].as_str() {
        line.push_str(&format!(" ({reason})"));
    }
    line
}

/// The step in force against the policy's limits.
fn current_step(shift: &Value) -> String {
    let policy = &shift["policy"];
    let current = &shift["current"];
    format!(
        "{}/{} requests, errors {} (max {}), p99 {} (max {}), extended {} of {} times",
        current["requests"],
        policy["min_requests"],
        percent(&current["error_rate"]),
        percent(&policy["max_error_rate"]),
        seconds(&current["p99_seconds"]),
        policy["max_p99"].as_str().unwrap_or("-"),
        shift["extensions"],
        policy["max_extensions"],
    )
}

/// A service's shift as a block, redrawn on a terminal.
pub fn shift_block(service: &Value) -> String {
    let shift = &service["shift"];
    let mut rows: Vec<(String, String)> = vec![(
        "weights".to_owned(),
        format!(
            "{} (before: {})",
            pairs(&service["weights"]["effective"]),
            pairs(&shift["before"])
        ),
    )];
    for step in shift["judged"].as_array().into_iter().flatten() {
        rows.push((
            format!("step {} ({}%)", step["step"], step["percent"]),
            judged(step),
        ));
    }
    if is_running(service) {
        rows.push((
            format!("step {} ({}%)", shift["step"], shift["percent"]),
            format!("now: {}", current_step(shift)),
        ));
    }
    rows.push((
        "started".to_owned(),
        format!(
            "{} by {}",
            text(&shift["started_at"]),
            text(&shift["started_by"])
        ),
    ));
    let mut out = ended_or_next(service);
    out.push('\n');
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (label, value) in rows {
        out.push_str(&format!("  {label:<width$}  {value}\n"));
    }
    out
}

/// A service's shift as one line, printed to a log.
pub fn shift_line(service: &Value) -> String {
    let shift = &service["shift"];
    let weights = pairs(&service["weights"]["effective"]);
    if is_running(service) {
        format!(
            "{}, weights {weights}; this step {}; judgement in {}",
            headline(service),
            current_step(shift),
            time_left(&shift["next_judgement_in_seconds"]),
        )
    } else {
        format!("{}; weights {weights}", ended_or_next(service))
    }
}

#[cfg(test)]
pub(in crate::ctl) mod samples {
    //! Status objects written from the API contract (`shift` per service).

    use serde_json::{json, Value};

    /// A service `name` whose shift to green is at step 2 of 4.
    pub fn running(name: &str, started_at: &str) -> Value {
        json!({
            "name": name,
            "serving": "weighted",
            "weights": {"file": {"blue": 100, "green": 0}, "effective": {"blue": 75, "green": 25}},
            "override": {"active": true, "source": "shift", "set_at": "2026-12-02T17:00:30Z",
                          "revert_at": null, "revert_to": null},
            "pools": [],
            "shift": {
                "state": "running",
                "to": "green",
                "policy": {"steps": [10, 25, 50, 100], "every": "30s", "max_error_rate": 0.01,
                           "max_p99": "500ms", "min_requests": 100, "max_extensions": 10},
                "step": 2,
                "percent": 25,
                "before": {"blue": 100, "green": 0},
                "started_at": started_at,
                "started_by": "api 127.0.0.1:5555",
                "step_started_at": "2026-12-02T17:00:30Z",
                "next_judgement_in_seconds": 12.5,
                "extensions": 0,
                "current": {"requests": 40, "errors": 0, "error_rate": 0.0, "p99_seconds": 0.002},
                "judged": [{"step": 1, "percent": 10, "requests": 120, "errors": 0, "error_rate": 0.0,
                            "p99_seconds": 0.002, "verdict": "pass", "reason": null}],
                "outcome": null,
                "reason": null,
                "ended_at": null
            }
        })
    }

    /// `running`, ended with `outcome` in `state`.
    pub fn ended(name: &str, started_at: &str, state: &str, outcome: &str) -> Value {
        let mut service = running(name, started_at);
        let shift = &mut service["shift"];
        shift["state"] = json!(state);
        shift["outcome"] = json!(outcome);
        shift["next_judgement_in_seconds"] = Value::Null;
        shift["current"] = Value::Null;
        shift["ended_at"] = json!("2026-12-02T17:01:00Z");
        if outcome == "rolled_back" {
            shift["reason"] =
                json!("error rate 5.00% is over max_error_rate 1.00% at step 2 (25%)");
            service["weights"]["effective"] = json!({"blue": 100, "green": 0});
        }
        service
    }

    /// A service that never shifted.
    pub fn idle(name: &str) -> Value {
        json!({
            "name": name,
            "weights": {"file": {"blue": 100, "green": 0}, "effective": {"blue": 100, "green": 0}},
            "override": {"active": false, "source": "file", "set_at": null,
                         "revert_at": null, "revert_to": null},
            "pools": [{"name": "blue", "weight": 100, "file_weight": 100, "requests_per_second": 0.0,
                       "requests_total": 0, "errors_5xx_total": 0, "upstream_connections_active": 0,
                       "in_rotation": true, "endpoints": []}],
            "shift": {"state": "idle"}
        })
    }

    pub fn status_of(services: Vec<Value>) -> Value {
        json!({"generation": 12, "config_file": "/etc/cutover.toml", "read_only": false,
               "last_reload_error": null, "listeners": [], "services": services})
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn a_running_shift_in_one_line_shows_the_step_against_the_limits() {
        let line = shift_line(&running("hello", "2026-12-02T17:00:00Z"));
        assert_eq!(
            line,
            "hello: shift to green running, step 2/4 (25%), weights blue=75 green=25; \
             this step 40/100 requests, errors 0.00% (max 1.00%), p99 2.0ms (max 500ms), \
             extended 0 of 10 times; judgement in 13s"
        );
    }

    #[test]
    fn an_ended_shift_in_one_line_says_how_and_why() {
        let line = shift_line(&ended("hello", "t0", "rolled_back", "rolled_back"));
        assert_eq!(
            line,
            "hello: shift to green rolled_back, step 2/4 (25%), ended 2026-12-02T17:01:00Z: \
             error rate 5.00% is over max_error_rate 1.00% at step 2 (25%); weights blue=100 green=0"
        );
        let done = shift_line(&ended("hello", "t0", "done", "done"));
        assert!(
            done.starts_with("hello: shift to green done, step 2/4"),
            "{done}"
        );
    }

    #[test]
    fn the_block_lists_judged_steps_and_the_step_in_force() {
        let block = shift_block(&running("hello", "2026-12-02T17:00:00Z"));
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(
            lines[0],
            "hello: shift to green running, step 2/4 (25%), next judgement in 13s"
        );
        assert_eq!(
            lines[1],
            "  weights       blue=75 green=25 (before: blue=100 green=0)"
        );
        assert_eq!(
            lines[2],
            "  step 1 (10%)  pass: 120 requests, errors 0.00%, p99 2.0ms"
        );
        assert!(
            lines[3].starts_with("  step 2 (25%)  now: 40/100 requests"),
            "{block}"
        );
        assert_eq!(
            lines[4],
            "  started       2026-12-02T17:00:00Z by api 127.0.0.1:5555"
        );

        let mut breached = ended("hello", "t0", "rolled_back", "rolled_back");
        breached["shift"]["judged"][0]["verdict"] = json!("breach");
        breached["shift"]["judged"][0]["reason"] = json!("p99 900ms is over max_p99 500ms");
        let block = shift_block(&breached);
        assert!(block.contains("breach: 120 requests"), "{block}");
        assert!(
            block.contains("(p99 900ms is over max_p99 500ms)"),
            "{block}"
        );
        assert!(!block.contains("now:"), "{block}");
    }

    #[test]
    fn latencies_and_shares_read_as_people_write_them() {
        assert_eq!(seconds(&json!(0.0021)), "2.1ms");
        assert_eq!(seconds(&json!(0.25)), "250ms");
        assert_eq!(seconds(&json!(1.5)), "1.50s");
        assert_eq!(seconds(&Value::Null), "-");
        assert_eq!(percent(&json!(0.0123)), "1.23%");
        assert_eq!(time_left(&json!(0.2)), "1s");
        assert_eq!(time_left(&json!(-1.0)), "0s");
    }
}
