//! What `ctl` prints, made from the admin API's JSON: the status table and
//! the notes after it, and the events table; a shift's views are
//! `render::shift`'s. Pure text from values: no I/O, no clock. A field the
//! answer lacks is shown as `-` or `?`, never a panic.

use serde_json::Value;

mod shift;

#[cfg(test)]
pub(super) use shift::samples;
use shift::{revert_note, shift_note};
pub use shift::{shift_block, shift_line};

/// `{"blue":0,"green":100}` as `blue=0 green=100`.
pub fn pairs(weights: &Value) -> String {
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

/// A string field, or `?` when the answer lacks it.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// An endpoint as `address up`, or `address DOWN (last error, since T)`,
/// with any passive ejection after it.
fn endpoint_cell(e: &Value) -> String {
    let address = text(&e["address"]);
    let mut cell = if e["healthy"].as_bool() == Some(true) {
        format!("{address} up")
    } else if e["checked"].as_bool() == Some(false) {
        format!("{address} unchecked")
    } else {
        format!(
            "{address} DOWN ({}, since {})",
            e["last_error"].as_str().unwrap_or("failing checks"),
            text(&e["since"])
        )
    };
    if let Some(seconds) = e["ejected_for_seconds"].as_f64() {
        cell.push_str(&format!(" EJECTED {seconds:.0}s more"));
    }
    cell
}

/// `ctl status`: a header line, a line per service in failover or down,
/// the pool table, then notes: shifts, pending reverts, pools out of
/// rotation.
pub fn status(status: &Value) -> String {
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
    .map(String::from)
    .to_vec()];
    let services = status["services"].as_array().map_or(&[][..], Vec::as_slice);
    for service in services {
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
        // "api", "file", or "shift" when a shift's step set them.
        let by = match service["override"]["set_by"].as_str() {
            Some("shift") => "shift",
            _ => service["override"]["source"].as_str().unwrap_or("-"),
        };
        let source = format!(
            "{by} {}",
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
            let first = |cell: String| if i == 0 { cell } else { String::new() };
            rows.push(vec![
                first(service["name"].as_str().unwrap_or("").to_owned()),
                pool["name"].as_str().unwrap_or("").to_owned(),
                pool["file_weight"].to_string(),
                pool["weight"].to_string(),
                first(source.clone()),
                format!("{:.1}", pool["requests_per_second"].as_f64().unwrap_or(0.0)),
                pool["requests_total"].to_string(),
                pool["errors_5xx_total"].to_string(),
                pool["upstream_connections_active"].to_string(),
                endpoints.join(", "),
            ]);
        }
    }
    out.push_str(&table(&rows));
    for service in services {
        for note in [shift_note(service), revert_note(service)]
            .into_iter()
            .flatten()
        {
            out.push_str(&note);
            out.push('\n');
        }
    }
    out.push_str(&rotation_notes(services));
    out
}

/// One line per pool out of rotation: draining, or safe to remove.
fn rotation_notes(services: &[Value]) -> String {
    let mut out = String::new();
    for service in services {
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
/// `before → after` of an event: weight maps as pairs, anything else as
/// compact JSON, nothing when the event has neither.
fn change(before: &Value, after: &Value) -> String {
    fn one(value: &Value) -> String {
        match value {
            Value::Null => "-".to_owned(),
            Value::Object(map) if !map.is_empty() && map.values().all(Value::is_number) => {
                pairs(value)
            }
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    if before.is_null() && after.is_null() {
        return String::new();
    }
    format!("{} → {}", one(before), one(after))
}

/// `ctl events`: one row per event, oldest first.
pub fn events(reply: &Value) -> String {
    let events = reply["events"].as_array().map_or(&[][..], Vec::as_slice);
    if events.is_empty() {
        return "no events\n".to_owned();
    }
    let mut rows = vec![["TIME", "KIND", "SOURCE", "TARGET", "CHANGE", "MESSAGE"]
        .map(String::from)
        .to_vec()];
    for event in events {
        let source = match event["client"].as_str() {
            Some(client) => format!("{} {client}", text(&event["source"])),
            None => text(&event["source"]).to_owned(),
        };
        let target: Vec<&str> = ["service", "pool", "endpoint"]
            .iter()
            .filter_map(|key| event[*key].as_str())
            .collect();
        rows.push(vec![
            text(&event["time"]).to_owned(),
            text(&event["kind"]).to_owned(),
            source,
            target.join("/"),
            change(&event["before"], &event["after"]),
            event["message"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn status_notes_a_shift_unless_idle_and_a_pending_revert() {
        let mut reverting = idle("api");
        reverting["override"]["revert_at"] = json!("2026-12-02T17:10:00Z");
        reverting["override"]["revert_to"] = json!({"blue": 100, "green": 0});
        let out = status(&status_sample());
        assert!(
            out.contains("hello: shift to green running, step 2/4 (25%), next judgement in 13s\n"),
            "{out}"
        );
        assert!(!out.contains("idle"), "{out}");
        let out = status(&samples::status_of(vec![reverting]));
        assert!(
            out.contains(
                "api: weights revert to blue=100 green=0 at 2026-12-02T17:10:00Z unless changed before\n"
            ),
            "{out}"
        );

        fn status_sample() -> Value {
            samples::status_of(vec![running("hello", "t0"), idle("quiet")])
        }
    }

    #[test]
    fn a_status_without_the_shift_key_renders_as_before() {
        let mut old = idle("hello");
        old.as_object_mut().map(|o| o.remove("shift"));
        let out = status(&samples::status_of(vec![old]));
        assert_eq!(out.lines().count(), 3, "{out}");
    }

    #[test]
    fn events_show_who_changed_what() {
        let reply = json!({"events": [
            {"seq": 7, "time": "2026-12-02T17:00:00.123Z", "kind": "weights", "source": "api",
             "client": "127.0.0.1:5555", "service": "hello", "pool": null, "endpoint": null,
             "generation": 12, "before": {"blue": 100, "green": 0}, "after": {"blue": 0, "green": 100},
             "message": "weights set"},
            {"seq": 8, "time": "2026-12-02T17:00:01.000Z", "kind": "drain", "source": "api",
             "client": "127.0.0.1:5556", "service": "hello", "pool": "blue", "endpoint": "10.0.0.10:80",
             "generation": 13, "before": "ready", "after": "drain", "message": ""},
            {"seq": 9, "time": "2026-12-02T17:00:02.000Z", "kind": "reload_failed", "source": "file",
             "generation": 13, "before": null, "after": null, "message": "line 3: unknown key"},
            {"seq": 10, "time": "2026-12-02T17:00:03.000Z", "kind": "shift_start", "source": "api",
             "client": "127.0.0.1:5557", "service": "hello", "before": {"blue": 100, "green": 0},
             "after": {"to": "green", "steps": [10, 100]}, "message": "to green"}
        ]});
        let out = events(&reply);
        let rows: Vec<Vec<&str>> = out
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            rows[0],
            ["TIME", "KIND", "SOURCE", "TARGET", "CHANGE", "MESSAGE"]
        );
        assert_eq!(
            rows[1],
            [
                "2026-12-02T17:00:00.123Z",
                "weights",
                "api 127.0.0.1:5555",
                "hello",
                "blue=100 green=0 → blue=0 green=100",
                "weights set"
            ]
        );
        assert_eq!(rows[2][3..], ["hello/blue/10.0.0.10:80", "ready → drain"]);
        assert_eq!(
            rows[3][1..],
            ["reload_failed", "file", "line 3: unknown key"]
        );
        // serde_json keeps keys sorted unless built with preserve_order.
        assert_eq!(
            rows[4][4],
            r#"blue=100 green=0 → {"steps":[10,100],"to":"green"}"#
        );
        assert_eq!(events(&json!({"events": []})), "no events\n");
    }
}
