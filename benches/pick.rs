//! Criterion benchmarks of the two hot spots STYLE.md asks to measure: the
//! per-request pick (`PickTable::pick`, `RoundRobin::next`, and the whole
//! `Service::pick` with endpoint health), and what a reload or weight change
//! costs (parsing a configuration, and building a `Snapshot` from it, cold or
//! keeping the previous generation's upstream pools, health checkers and
//! activity records).
//! They use only the crate's public API, bind no socket and send nothing on
//! the network. Run with `cargo bench --bench pick` (add `-- --quick` for a
//! short run).

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use cutover::balance::{PickTable, RoundRobin};
use cutover::config::{self, Config};
use cutover::drain::Activities;
use cutover::health::HealthChecks;
use cutover::metrics::Metrics;
use cutover::snapshot::{Inputs, Snapshot};
use cutover::state::Overrides;
use cutover::upstream::Upstreams;

/// Service counts for the parse and snapshot benchmarks.
const SERVICE_COUNTS: [usize; 3] = [1, 10, 100];

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for (name, weights) in [
        ("2_pools_90_10", &[90, 10][..]),
        ("4_pools_40_30_20_10", &[40, 30, 20, 10][..]),
    ] {
        let table = PickTable::new(weights).expect("a weight is above zero");
        group.bench_function(name, |b| b.iter(|| black_box(table.pick())));
    }
    let rr = RoundRobin::default();
    group.bench_function("round_robin_3_endpoints", |b| {
        b.iter(|| black_box(rr.next(black_box(3))))
    });
    // What a request does: the weighted pick, then a usable endpoint of that
    // pool (health and ejection read from atomics), round-robin.
    let snapshot = build_once(&parse(&config_text(1, "none")));
    let service = &snapshot.services[0];
    group.bench_function("service_pick_2_pools_90_10", |b| {
        b.iter(|| black_box(service.pick()))
    });
    group.finish();

    let mut group = c.benchmark_group("pick_table_new");
    for (name, weights) in [
        ("2_pools_90_10", &[90, 10][..]),
        ("2_pools_33_67", &[33, 67][..]),
        ("4_pools_40_30_20_10", &[40, 30, 20, 10][..]),
    ] {
        group.bench_function(name, |b| b.iter(|| PickTable::new(black_box(weights))));
    }
    group.finish();
}

/// A valid configuration with `services` services on one listener, each with
/// its own host, a blue (90) and green (10) pool of one endpoint, and active
/// health checks of `health` kind ("none", "tcp" or "http").
fn config_text(services: usize, health: &str) -> String {
    let names: Vec<String> = (0..services).map(|i| format!("\"svc{i}\"")).collect();
    let mut text = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nservices = [{}]\n",
        names.join(", ")
    );
    for i in 0..services {
        text.push_str(&format!(
            r#"
[[service]]
name = "svc{i}"
hosts = ["svc{i}.example.com"]
  [[service.pool]]
  name = "blue"
  weight = 90
  endpoints = ["10.0.{hi}.{lo}:80"]
  [[service.pool]]
  name = "green"
  weight = 10
  endpoints = ["10.1.{hi}.{lo}:80"]
  [service.health]
  kind = "{health}"
"#,
            hi = i / 256,
            lo = i % 256,
        ));
    }
    text
}

fn parse(text: &str) -> Config {
    config::parse(Path::new("bench.toml"), text.to_owned())
        .unwrap_or_else(|e| panic!("the bench configuration is invalid: {e}"))
}

/// A snapshot of `config`, built with fresh upstreams, health checks and
/// activity records. With checks of kind "none" nothing is spawned, so no
/// runtime is needed.
fn build_once(config: &Config) -> Snapshot {
    Snapshot::build(
        config,
        1,
        Inputs {
            previous: &Snapshot::empty(),
            overrides: &Overrides::default(),
            upstreams: &mut Upstreams::default(),
            checks: &mut HealthChecks::default(),
            activities: &mut Activities::default(),
            metrics: &Metrics::new(),
            tls: &cutover::tls::Material::default(),
        },
    )
}

fn reload(c: &mut Criterion) {
    // Building a snapshot starts a health checker task per new endpoint, so it
    // needs a runtime context, as on the server's control plane. This runtime
    // is never driven: the checkers it is handed never run, so the benchmark
    // sends no probe to the (documentation) endpoint addresses.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _guard = rt.enter();
    // One registry for the whole run, as in the server: label handles are
    // resolved per build, series are created once.
    let metrics = Metrics::new();
    let overrides = Overrides::default();

    let mut group = c.benchmark_group("config_parse");
    for services in SERVICE_COUNTS {
        let text = config_text(services, "tcp");
        group.bench_with_input(BenchmarkId::from_parameter(services), &text, |b, text| {
            b.iter_with_large_drop(|| parse(text))
        });
    }
    group.finish();

    // Cold, as at start: new upstream connection pools for every endpoint.
    // Health checks are off ("none") so no checker task is spawned per
    // iteration.
    let mut group = c.benchmark_group("snapshot_build_cold");
    for services in SERVICE_COUNTS {
        let config = parse(&config_text(services, "none"));
        group.bench_with_input(
            BenchmarkId::from_parameter(services),
            &config,
            |b, config| {
                b.iter_with_large_drop(|| {
                    let mut upstreams = Upstreams::default();
                    let mut checks = HealthChecks::default();
                    let mut activities = Activities::default();
                    let snapshot = Snapshot::build(
                        config,
                        1,
                        Inputs {
                            previous: &Snapshot::empty(),
                            overrides: &overrides,
                            upstreams: &mut upstreams,
                            checks: &mut checks,
                            activities: &mut activities,
                            metrics: &metrics,
                            tls: &cutover::tls::Material::default(),
                        },
                    );
                    (snapshot, upstreams, checks, activities)
                })
            },
        );
    }
    group.finish();

    // A reload or API weight change that keeps every endpoint: connection
    // pools, health checkers (the default, tcp), activity records and each
    // service's mode are looked up and kept.
    let mut group = c.benchmark_group("snapshot_build_reload");
    for services in SERVICE_COUNTS {
        let config = parse(&config_text(services, "tcp"));
        let mut upstreams = Upstreams::default();
        let mut checks = HealthChecks::default();
        let mut activities = Activities::default();
        let first = Snapshot::build(
            &config,
            1,
            Inputs {
                previous: &Snapshot::empty(),
                overrides: &overrides,
                upstreams: &mut upstreams,
                checks: &mut checks,
                activities: &mut activities,
                metrics: &metrics,
                tls: &cutover::tls::Material::default(),
            },
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(services),
            &config,
            |b, config| {
                b.iter_with_large_drop(|| {
                    Snapshot::build(
                        config,
                        2,
                        Inputs {
                            previous: &first,
                            overrides: &overrides,
                            upstreams: &mut upstreams,
                            checks: &mut checks,
                            activities: &mut activities,
                            metrics: &metrics,
                            tls: &cutover::tls::Material::default(),
                        },
                    )
                })
            },
        );
        checks.stop();
    }
    group.finish();
}

criterion_group!(benches, pick, reload);
criterion_main!(benches);
