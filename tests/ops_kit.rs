//! The operations kit (Dockerfile, docker-compose.yml, deploy/, grafana/)
//! stays in step with the gateway:
//!
//! - every YAML and JSON file of the kit parses, and the pieces refer to each
//!   other consistently (ports, paths, names, the datasource uid);
//! - the Kubernetes ConfigMap's stompgate.toml loads through the gateway's own
//!   configuration loader, and the pod's grace period covers the drain;
//! - every metric the Grafana dashboard queries, and every metric of
//!   docs/operations.md's table, is exported by a running gateway's /metrics
//!   (an in-process gateway on the real RabbitMQ, after a little traffic);
//! - `haproxy -c` accepts deploy/haproxy.cfg, the SockJS example
//!   deploy/haproxy-sockjs.cfg (`balance uri`) and the local template
//!   deploy/haproxy-local.cfg.in once its placeholders are filled in (HAProxy
//!   must be installed: `apt-get install -y haproxy`; it is never started).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::process::haproxy_binary;
use common::*;
use lapin::BasicProperties;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use stompgate::config::Config;
use stompgate::stomp::{Command, Frame};

// ---- files -------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a YAML file (`---` separated); none may be empty.
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    let docs: Vec<Yaml> = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: invalid YAML: {e}")))
        .collect();
    assert!(!docs.is_empty(), "{rel}: no YAML document");
    for (i, doc) in docs.iter().enumerate() {
        assert!(
            doc.is_mapping(),
            "{rel}: document {i} is not a mapping: {doc:?}"
        );
    }
    docs
}

fn yaml(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/dashboards/stompgate.json"))
        .expect("grafana/dashboards/stompgate.json: invalid JSON")
}

/// Files under `dir` (relative to the root) whose name ends with `suffix`,
/// recursively, as paths relative to the root, sorted.
fn files_under(dir: &str, suffix: &str) -> Vec<String> {
    fn walk(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, suffix, out);
            } else if path.to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), suffix, &mut out);
    let mut rel: Vec<String> = out
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .expect("under root")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    rel.sort();
    rel
}

fn str_of<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {value:?}"))
}

fn seq_of<'a>(value: &'a Yaml, what: &str) -> &'a Vec<Yaml> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {value:?}"))
}

fn strings(value: &Yaml, what: &str) -> Vec<String> {
    seq_of(value, what)
        .iter()
        .map(|v| str_of(v, what).to_owned())
        .collect()
}

// ---- metric names ------------------------------------------------------------

/// `stompgate_[a-z_]+` names in `text`.
fn metric_names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("stompgate_") {
        let tail = &rest[at..];
        let len = "stompgate_".len()
            + tail["stompgate_".len()..]
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
                .count();
        names.push(tail[..len].to_owned());
        rest = &tail[len..];
    }
    names
}

/// The name a histogram's series belong to.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every PromQL query of the dashboard: the panels' `expr` and the template
/// variables' queries.
fn dashboard_queries(dash: &Json) -> Vec<String> {
    fn walk(value: &Json, out: &mut Vec<String>) {
        match value {
            Json::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "definition" | "query", Json::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Json::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dash, &mut out);
    out
}

/// One row of docs/operations.md's metric table.
#[derive(Debug)]
struct DocumentedMetric {
    name: String,
    /// `{version}` -> ("version", None); `{kind="broadcast"}` -> ("kind", Some("broadcast")).
    label: Option<(String, Option<String>)>,
    kind: String,
}

/// The table under "## Metrics" in docs/operations.md: the first column's
/// backticked names (one or more per row), the second column's type.
fn documented_metrics() -> Vec<DocumentedMetric> {
    let doc = read("docs/operations.md");
    let section = doc
        .split("\n## Metrics")
        .nth(1)
        .expect("docs/operations.md has a '## Metrics' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, kind) = (cells[1], cells[2].to_owned());
        for token in names.split('`').skip(1).step_by(2) {
            let (name, label) = match token.split_once('{') {
                None => (token.to_owned(), None),
                Some((name, label)) => {
                    let label = label.trim_end_matches('}');
                    let label = match label.split_once('=') {
                        None => (label.to_owned(), None),
                        Some((k, v)) => (k.to_owned(), Some(v.trim_matches('"').to_owned())),
                    };
                    (name.to_owned(), Some(label))
                }
            };
            out.push(DocumentedMetric {
                name,
                label,
                kind: kind.clone(),
            });
        }
    }
    assert!(
        out.len() >= 10,
        "docs/operations.md: metric table not found or too short: {out:?}"
    );
    out
}

/// What /metrics exports: `# TYPE` of each family, and every sample line.
struct Exported {
    types: BTreeMap<String, String>,
    samples: Vec<(String, String, f64)>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("sample line");
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (series, ""),
                };
                let value = value.parse().unwrap_or(f64::NAN);
                samples.push((name.to_owned(), labels.to_owned(), value));
            }
        }
        Exported { types, samples }
    }

    /// The sum of `name`'s samples whose labels contain `label` (all if empty).
    fn value(&self, name: &str, label: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && l.contains(label))
            .map(|(_, _, v)| v)
            .sum()
    }

    fn has_series(&self, name: &str, label: &str) -> bool {
        self.samples
            .iter()
            .any(|(n, l, _)| n == name && l.contains(label))
    }
}

// ---- the files parse ---------------------------------------------------------

#[test]
fn every_yaml_and_json_file_of_the_kit_parses() {
    let mut files = vec![
        "docker-compose.yml".to_owned(),
        "deploy/prometheus.yml".to_owned(),
    ];
    let kubernetes = files_under("deploy/kubernetes", ".yaml");
    assert!(
        kubernetes.len() >= 5,
        "deploy/kubernetes: expected deployment, service, pdb, hpa, configmap: {kubernetes:?}"
    );
    let provisioning = files_under("grafana/provisioning", ".yml");
    assert!(
        provisioning.len() >= 2,
        "grafana/provisioning: expected a datasource and a dashboard provider: {provisioning:?}"
    );
    files.extend(kubernetes);
    files.extend(provisioning);
    for file in &files {
        yaml_docs(file);
    }
    let dash = dashboard();
    assert_eq!(dash["uid"], "stompgate");
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert!(
        dash["panels"].as_array().map_or(0, Vec::len) > 10,
        "the dashboard has panels"
    );
}

// ---- docker-compose.yml, Prometheus, Grafana ---------------------------------

#[test]
fn compose_stack_is_wired_together() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    for name in [
        "rabbitmq",
        "gateway1",
        "gateway2",
        "haproxy",
        "prometheus",
        "grafana",
    ] {
        assert!(services[name].is_mapping(), "service {name} is missing");
    }

    let rabbitmq = &services["rabbitmq"];
    assert!(str_of(&rabbitmq["image"], "rabbitmq image").starts_with("rabbitmq:3-management"));
    let ports = strings(&rabbitmq["ports"], "rabbitmq ports");
    assert!(ports.contains(&"5672:5672".to_owned()) && ports.contains(&"15672:15672".to_owned()));
    let check = strings(&rabbitmq["healthcheck"]["test"], "rabbitmq healthcheck").join(" ");
    assert!(
        check.contains("rabbitmq-diagnostics -q ping"),
        "rabbitmq healthcheck: {check}"
    );

    for gateway in ["gateway1", "gateway2"] {
        let service = &services[gateway];
        assert_eq!(service["build"].as_str(), Some("."), "{gateway} build");
        assert_eq!(
            service["environment"]["STOMPGATE_AMQP_URL"].as_str(),
            Some("amqp://guest:guest@rabbitmq:5672/%2f"),
            "{gateway} AMQP URL"
        );
        assert_eq!(
            service["depends_on"]["rabbitmq"]["condition"].as_str(),
            Some("service_healthy"),
            "{gateway} waits for a healthy RabbitMQ"
        );
    }

    // HAProxy: its configuration is mounted, it publishes the gateway port,
    // and it balances over both replicas.
    let haproxy = &services["haproxy"];
    assert!(str_of(&haproxy["image"], "haproxy image").starts_with("haproxy:2.8"));
    let volumes = strings(&haproxy["volumes"], "haproxy volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg")),
        "haproxy mounts deploy/haproxy.cfg: {volumes:?}"
    );
    assert!(strings(&haproxy["ports"], "haproxy ports").contains(&"15674:15674".to_owned()));
    let cfg = read("deploy/haproxy.cfg");
    for gateway in ["gateway1", "gateway2"] {
        assert!(
            cfg.contains(&format!("server {gateway} {gateway}:15674")),
            "deploy/haproxy.cfg routes to {gateway}:15674"
        );
    }

    // Prometheus scrapes both replicas' /metrics.
    let prometheus = &services["prometheus"];
    let volumes = strings(&prometheus["volumes"], "prometheus volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml")),
        "prometheus mounts deploy/prometheus.yml: {volumes:?}"
    );
    let scrape = yaml("deploy/prometheus.yml");
    let jobs = seq_of(&scrape["scrape_configs"], "scrape_configs");
    let stompgate_job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("stompgate"))
        .expect("a stompgate scrape job");
    assert_eq!(stompgate_job["metrics_path"].as_str(), Some("/metrics"));
    let targets: Vec<String> = seq_of(&stompgate_job["static_configs"], "static_configs")
        .iter()
        .flat_map(|c| strings(&c["targets"], "targets"))
        .collect();
    for target in ["gateway1:15674", "gateway2:15674"] {
        assert!(
            targets.contains(&target.to_owned()),
            "Prometheus scrapes {target}: {targets:?}"
        );
    }

    // Grafana: the mounted directories exist, the provider reads where the
    // dashboards are mounted, and the dashboard uses the provisioned datasource.
    let grafana = &services["grafana"];
    let mounts: Vec<(String, String)> = strings(&grafana["volumes"], "grafana volumes")
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (host, _) in &mounts {
        assert!(
            root().join(host.trim_start_matches("./")).is_dir(),
            "grafana mounts {host}, which is not a directory"
        );
    }
    let dashboards_mount = &mounts
        .iter()
        .find(|(host, _)| host == "./grafana/dashboards")
        .expect("grafana mounts ./grafana/dashboards")
        .1;
    let provider = yaml("grafana/provisioning/dashboards/stompgate.yml");
    let providers = seq_of(&provider["providers"], "providers");
    assert_eq!(
        providers[0]["options"]["path"].as_str(),
        Some(dashboards_mount.as_str()),
        "the dashboard provider reads the mounted directory"
    );
    let datasources = yaml("grafana/provisioning/datasources/prometheus.yml");
    let datasource = &seq_of(&datasources["datasources"], "datasources")[0];
    assert_eq!(datasource["type"].as_str(), Some("prometheus"));
    assert_eq!(datasource["url"].as_str(), Some("http://prometheus:9090"));
    let uid = str_of(&datasource["uid"], "datasource uid");
    assert_eq!(uid, "prometheus");

    fn datasource_uids(value: &Json, out: &mut BTreeSet<String>) {
        match value {
            Json::Object(map) => {
                if let Some(Json::Object(ds)) = map.get("datasource") {
                    if ds.get("type").and_then(Json::as_str) == Some("prometheus") {
                        out.insert(ds["uid"].as_str().unwrap_or("").to_owned());
                    }
                }
                map.values().for_each(|v| datasource_uids(v, out));
            }
            Json::Array(items) => items.iter().for_each(|v| datasource_uids(v, out)),
            _ => {}
        }
    }
    let mut uids = BTreeSet::new();
    datasource_uids(&dashboard(), &mut uids);
    assert_eq!(
        uids,
        BTreeSet::from([uid.to_owned()]),
        "dashboard datasources"
    );
}

// ---- Dockerfile --------------------------------------------------------------

#[test]
fn dockerfile_builds_and_runs_the_gateway() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    for needle in [
        "FROM rust:1-bookworm AS builder",
        "FROM debian:bookworm-slim",
        "cargo build --release --locked --bin stompgate",
        "ca-certificates",
        "ENV STOMPGATE_LISTEN=0.0.0.0:15674",
        "EXPOSE 15674",
        "STOPSIGNAL SIGTERM",
        "ENTRYPOINT [\"/usr/local/bin/stompgate\"]",
    ] {
        assert!(has(needle), "Dockerfile lacks {needle:?}");
    }
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("Dockerfile sets a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runs as root: {user}"
    );

    // The build context keeps what cargo needs to load the workspace.
    let dockerignore = read(".dockerignore");
    let ignored: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignored.contains(&"target"),
        ".dockerignore leaves out target/"
    );
    for needed in ["Cargo.toml", "Cargo.lock", "src", "bench", "benches"] {
        assert!(
            !ignored.contains(&needed),
            ".dockerignore must not leave out {needed}"
        );
        assert!(root().join(needed).exists(), "{needed} exists");
    }
}

// ---- Kubernetes --------------------------------------------------------------

#[test]
fn kubernetes_manifests_fit_the_gateway() {
    let mut by_kind: BTreeMap<String, Vec<Yaml>> = BTreeMap::new();
    for file in files_under("deploy/kubernetes", ".yaml") {
        for doc in yaml_docs(&file) {
            assert!(
                doc["apiVersion"].is_string() && doc["metadata"]["name"].is_string(),
                "{file}: every manifest has apiVersion and metadata.name"
            );
            let kind = str_of(&doc["kind"], "kind").to_owned();
            by_kind.entry(kind).or_default().push(doc);
        }
    }
    let one = |kind: &str| -> &Yaml {
        let docs = by_kind
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"));
        assert_eq!(docs.len(), 1, "one {kind}");
        &docs[0]
    };
    let named = |kind: &str, name: &str| -> &Yaml {
        by_kind
            .get(kind)
            .and_then(|docs| {
                docs.iter()
                    .find(|d| d["metadata"]["name"].as_str() == Some(name))
            })
            .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
    };

    let deployment = one("Deployment");
    let name = str_of(&deployment["metadata"]["name"], "deployment name");
    assert_eq!(deployment["apiVersion"].as_str(), Some("apps/v1"));
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
    let pod = &deployment["spec"]["template"];
    let pod_labels = pod["metadata"]["labels"].as_mapping().expect("pod labels");
    let selects_pods = |selector: &Yaml, what: &str| {
        let selector = selector.as_mapping().expect(what);
        assert!(!selector.is_empty(), "{what} is empty");
        for (k, v) in selector {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{what}: {k:?} does not match the pods"
            );
        }
    };
    selects_pods(
        &deployment["spec"]["selector"]["matchLabels"],
        "Deployment selector",
    );

    let containers = seq_of(&pod["spec"]["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let port = &seq_of(&container["ports"], "ports")[0];
    assert_eq!(port["containerPort"].as_u64(), Some(15674));
    let port_name = str_of(&port["name"], "port name");
    let probe = |probe: &str, path: &str| {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert!(
            get["port"].as_str() == Some(port_name) || get["port"].as_u64() == Some(15674),
            "{probe} port"
        );
    };
    probe("readinessProbe", "/readyz");
    probe("livenessProbe", "/healthz");

    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("15674"));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    let resources = &container["resources"];
    for (section, key) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            resources[section][key].is_string(),
            "resources.{section}.{key} is set"
        );
    }

    // The configuration file: mounted from the ConfigMap, passed with
    // --config, and accepted by the gateway's own loader (unknown keys are an
    // error there) with the documented defaults, apart from `listen`.
    let args = strings(&container["args"], "args");
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].clone())
        .expect("--config in args");
    let mount = seq_of(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| config_path.starts_with(str_of(&m["mountPath"], "mountPath")))
        .expect("the --config file's directory is mounted");
    let volume_name = str_of(&mount["name"], "volume mount name");
    let volume = seq_of(&pod["spec"]["volumes"], "volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some(volume_name))
        .expect("the mounted volume");
    let configmap_name = str_of(&volume["configMap"]["name"], "configMap volume");
    let file_name = Path::new(&config_path)
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file name");
    let toml = str_of(
        &named("ConfigMap", configmap_name)["data"][file_name],
        "stompgate.toml in the ConfigMap",
    );
    let dir = std::env::temp_dir().join(format!("stompgate-ops-kit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let toml_path = dir.join("stompgate.toml");
    std::fs::write(&toml_path, toml).expect("write toml");
    let loaded = Config::load(Some(&toml_path), Vec::new())
        .unwrap_or_else(|e| panic!("the ConfigMap's stompgate.toml does not load: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(loaded.listen.port(), 15674);
    assert!(
        loaded.listen.ip().is_unspecified(),
        "listens on all interfaces"
    );
    let expected = Config {
        listen: loaded.listen,
        ..Config::default()
    };
    assert_eq!(
        format!("{loaded:?}"),
        format!("{expected:?}"),
        "the ConfigMap's stompgate.toml holds the defaults (docs/configuration.md)"
    );

    // Environment: the AMQP URL from the Secret, the rest from a ConfigMap.
    let env = seq_of(&container["env"], "env");
    let amqp = env
        .iter()
        .find(|e| e["name"].as_str() == Some("STOMPGATE_AMQP_URL"))
        .expect("STOMPGATE_AMQP_URL in env");
    let secret_ref = &amqp["valueFrom"]["secretKeyRef"];
    let secret = named("Secret", str_of(&secret_ref["name"], "secret name"));
    let key = str_of(&secret_ref["key"], "secret key");
    assert!(
        secret["stringData"][key].is_string() || secret["data"][key].is_string(),
        "the Secret has {key}"
    );
    for source in seq_of(&container["envFrom"], "envFrom") {
        named(
            "ConfigMap",
            str_of(&source["configMapRef"]["name"], "envFrom configMapRef"),
        );
    }

    // Shutdown: the grace period covers preStop, the drain window and the
    // gateway's 10 s of extra grace.
    let pre_stop = strings(
        &container["lifecycle"]["preStop"]["exec"]["command"],
        "preStop command",
    );
    assert_eq!(pre_stop[0], "sleep", "preStop sleeps: {pre_stop:?}");
    let sleep: u64 = pre_stop[1].parse().expect("preStop sleep seconds");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert_eq!(grace, 30);
    let needed = sleep + loaded.drain_window_ms.div_ceil(1000) + 10;
    assert!(
        grace >= needed,
        "grace period {grace}s < preStop {sleep}s + drain window + 10s"
    );

    let service = one("Service");
    selects_pods(&service["spec"]["selector"], "Service selector");
    let service_port = &seq_of(&service["spec"]["ports"], "service ports")[0];
    assert_eq!(service_port["port"].as_u64(), Some(15674));
    assert!(
        service_port["targetPort"].as_str() == Some(port_name)
            || service_port["targetPort"].as_u64() == Some(15674)
    );

    let pdb = one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));
    selects_pods(&pdb["spec"]["selector"]["matchLabels"], "PDB selector");
    assert!(
        pdb["spec"]["minAvailable"].as_u64() == Some(2)
            || pdb["spec"]["maxUnavailable"].as_u64() == Some(1),
        "PDB keeps all but one replica"
    );

    let hpa = one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"].as_str(),
        Some("Deployment")
    );
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"].as_str(), Some(name));
    let cpu = seq_of(&hpa["spec"]["metrics"], "hpa metrics")
        .iter()
        .find(|m| m["resource"]["name"].as_str() == Some("cpu"))
        .expect("a CPU metric");
    assert_eq!(
        cpu["resource"]["target"]["averageUtilization"].as_u64(),
        Some(70)
    );
    assert!(hpa["spec"]["minReplicas"].as_u64() >= Some(2));
}

// ---- metrics -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_documented_metrics_are_exported() {
    let gw = start_gateway(|_| {}).await;
    assert_eq!(http_get(gw.addr, "/healthz").await.0, 200);
    assert_eq!(http_get(gw.addr, "/readyz").await.0, 200);

    // Traffic, so that every series has moved: a broadcast and a queue
    // subscription, a SEND with a receipt (publisher confirm), deliveries of
    // both kinds, and one malformed frame from a second client.
    let topic = unique("ops-topic");
    let queue = unique("ops-queue");
    let (mut client, _) = StompClient::connect(&gw.ws_url(), "1.2").await;
    client.subscribe("t", &format!("/topic/{topic}"), &[]).await;
    client.subscribe("q", &format!("/queue/{queue}"), &[]).await;

    client
        .send(
            &Frame::new(Command::Send)
                .with_header("destination", &format!("/topic/{topic}"))
                .with_header("receipt", "sent")
                .with_body(&b"from stomp"[..]),
        )
        .await;
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let frame = client.recv().await;
        match frame.command {
            Command::Receipt => {
                assert_eq!(frame.header("receipt-id").as_deref(), Some("sent"));
                seen.insert("receipt");
            }
            Command::Message => {
                assert_eq!(frame.header("subscription").as_deref(), Some("t"));
                seen.insert("message");
            }
            other => panic!("unexpected {other} frame"),
        }
    }

    let conn = amqp().await;
    let ch = confirm_channel(&conn).await;
    publish(&ch, "", &queue, b"from amqp", BasicProperties::default()).await;
    let message = client.expect(Command::Message).await;
    assert_eq!(message.header("subscription").as_deref(), Some("q"));

    let mut bad = StompClient::open(&gw.ws_url(), &["v12.stomp"]).await;
    bad.send_bytes(&b"CONNECT\naccept-version:1.2\n\n\0"[..], false)
        .await;
    bad.expect(Command::Connected).await;
    bad.send_bytes(&b"SEND\ndestination /queue/x\n\nbody\0"[..], false)
        .await;
    bad.expect_error("malformed header line").await;

    let (status, text) = http_get(gw.addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {text}");
    let exported = Exported::parse(&text);

    // Every metric the dashboard queries.
    let queried: BTreeSet<String> = dashboard_queries(&dashboard())
        .iter()
        .flat_map(|q| metric_names_in(q))
        .collect();
    assert!(
        queried.len() >= 15,
        "the dashboard queries few metrics: {queried:?}"
    );
    for name in &queried {
        let base = family(name);
        assert!(
            exported.types.contains_key(name) || exported.types.contains_key(base),
            "the dashboard queries {name}, which /metrics does not export:\n{text}"
        );
        if name != base {
            assert_eq!(
                exported.types.get(base).map(String::as_str),
                Some("histogram"),
                "{name} is a histogram's series"
            );
            assert!(exported.has_series(name, ""), "{name} has samples:\n{text}");
        }
    }

    // Every metric of docs/operations.md, with its type and label.
    let documented = documented_metrics();
    for metric in &documented {
        let kind = exported.types.get(&metric.name).unwrap_or_else(|| {
            panic!(
                "docs/operations.md lists {}, which /metrics does not export:\n{text}",
                metric.name
            )
        });
        assert_eq!(kind, &metric.kind, "type of {}", metric.name);
        let sample_name = if kind == "histogram" {
            format!("{}_count", metric.name)
        } else {
            metric.name.clone()
        };
        let label = match &metric.label {
            None => String::new(),
            Some((key, None)) => format!("{key}=\""),
            Some((key, Some(value))) => format!("{key}=\"{value}\""),
        };
        assert!(
            exported.has_series(&sample_name, &label),
            "no {sample_name} series with {label}:\n{text}"
        );
        // The dashboard shows it too.
        assert!(
            queried.contains(&metric.name) || queried.contains(&format!("{}_bucket", metric.name)),
            "the dashboard has no panel for {}",
            metric.name
        );
    }
    // And nothing is exported that the docs do not list.
    let listed: BTreeSet<&str> = documented.iter().map(|m| m.name.as_str()).collect();
    for name in exported.types.keys() {
        assert!(
            listed.contains(name.as_str()),
            "/metrics exports {name}, which docs/operations.md does not list"
        );
    }

    // The traffic above moved the series it should have.
    let moved = [
        ("stompgate_connections", ""),
        ("stompgate_sessions", "version=\"1.2\""),
        ("stompgate_subscriptions", ""),
        ("stompgate_amqp_queues", "kind=\"broadcast\""),
        ("stompgate_amqp_queues", "kind=\"consumer\""),
        ("stompgate_frames_in_total", "command=\"SEND\""),
        ("stompgate_frames_out_total", "command=\"RECEIPT\""),
        ("stompgate_bytes_in_total", ""),
        ("stompgate_bytes_out_total", ""),
        ("stompgate_messages_delivered_total", "kind=\"broadcast\""),
        ("stompgate_messages_delivered_total", "kind=\"queue\""),
        ("stompgate_publish_confirm_seconds_count", ""),
        ("stompgate_amqp_connections_up", ""),
        ("stompgate_errors_total", "kind=\"protocol\""),
    ];
    for (name, label) in moved {
        assert!(
            exported.value(name, label) >= 1.0,
            "{name}{{{label}}} did not move:\n{text}"
        );
    }

    client.disconnect().await;
    let _ = ch
        .queue_delete(
            queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
}

// ---- HAProxy -----------------------------------------------------------------

/// `haproxy -c -f path`: (success, stderr and stdout).
fn haproxy_check(haproxy: &Path, path: &Path) -> (bool, String) {
    let output = std::process::Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .expect("run haproxy -c");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A section's settings, comments and blank lines dropped.
fn haproxy_section(cfg: &str, header: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in cfg.lines() {
        let line = line.split('#').next().unwrap_or("").trim_end();
        if line.is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            inside = line == header;
            continue;
        }
        if inside {
            lines.push(line.trim().to_owned());
        }
    }
    assert!(!lines.is_empty(), "no section {header:?}");
    lines
}

#[test]
fn haproxy_configurations_are_valid() {
    let haproxy = haproxy_binary().expect(
        "haproxy is not installed: install Debian's `haproxy` package \
         (apt-get install -y haproxy, or scripts/ensure-haproxy.sh)",
    );

    let template = read("deploy/haproxy-local.cfg.in");
    for placeholder in ["@FRONTEND_PORT@", "@BACKENDS@"] {
        assert_eq!(
            template.matches(placeholder).count(),
            1,
            "{placeholder} appears once in deploy/haproxy-local.cfg.in"
        );
    }
    let backends = [25001, 25002]
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "    server gw{} 127.0.0.1:{port} check inter 500ms fall 2 rise 1",
                i + 1
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let local = template
        .replace("@FRONTEND_PORT@", "25999")
        .replace("@BACKENDS@", &backends);
    for bind in local
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("bind "))
    {
        assert!(
            bind.starts_with("bind 127.0.0.1:"),
            "the local frontend binds 127.0.0.1 only: {bind}"
        );
    }
    let dir = std::env::temp_dir().join(format!("stompgate-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let local_path = dir.join("haproxy-local.cfg");
    std::fs::write(&local_path, &local).expect("write local cfg");
    let (ok, output) = haproxy_check(&haproxy, &local_path);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        ok,
        "haproxy -c rejects deploy/haproxy-local.cfg.in:\n{output}\n{local}"
    );
    assert!(
        !output.contains("[WARNING]") && !output.contains("[ALERT]"),
        "haproxy -c warns about deploy/haproxy-local.cfg.in:\n{output}"
    );

    // The compose configuration: gateway1/gateway2 do not resolve here, which
    // `init-addr ... none` tolerates (it is the only warning allowed).
    let compose_path = root().join("deploy/haproxy.cfg");
    let (ok, output) = haproxy_check(&haproxy, &compose_path);
    assert!(ok, "haproxy -c rejects deploy/haproxy.cfg:\n{output}");
    for line in output
        .lines()
        .filter(|l| l.contains("[WARNING]") || l.contains("[ALERT]"))
    {
        assert!(
            line.contains("could not resolve address 'gateway"),
            "haproxy -c warns about deploy/haproxy.cfg: {line}"
        );
    }

    // The SockJS example: sessions kept on one replica by the session
    // segment of the path (`balance uri`), the same defaults.
    let uri_path = root().join("deploy/haproxy-sockjs.cfg");
    let (ok, output) = haproxy_check(&haproxy, &uri_path);
    assert!(
        ok,
        "haproxy -c rejects deploy/haproxy-sockjs.cfg:\n{output}"
    );
    for line in output
        .lines()
        .filter(|l| l.contains("[WARNING]") || l.contains("[ALERT]"))
    {
        assert!(
            line.contains("could not resolve address 'gateway"),
            "haproxy -c warns about deploy/haproxy-sockjs.cfg: {line}"
        );
    }
    let uri = read("deploy/haproxy-sockjs.cfg");
    let sessions = haproxy_section(&uri, "backend sockjs_sessions");
    for setting in [
        "balance uri depth 3",
        "hash-type consistent",
        "option httpchk GET /readyz",
    ] {
        assert!(
            sessions.iter().any(|l| l == setting),
            "sockjs_sessions: {setting}"
        );
    }

    // The SockJS example keeps streams and long polls open past the
    // heart-beat (`sockjs.heartbeat_ms`, 25 s) and retries only what never
    // reached a replica (a retried `xhr_send` POST would send twice).
    let sockjs_defaults = haproxy_section(&uri, "defaults");
    for setting in [
        "mode http",
        "timeout tunnel 1h",
        "timeout client 60s",
        "timeout server 60s",
        "retry-on conn-failure",
    ] {
        assert!(
            sockjs_defaults.iter().any(|l| l == setting),
            "deploy/haproxy-sockjs.cfg defaults: {setting}"
        );
    }

    // Both carry the same WebSocket and health-check settings.
    let compose = read("deploy/haproxy.cfg");
    assert_eq!(
        haproxy_section(&compose, "defaults"),
        haproxy_section(&local, "defaults"),
        "deploy/haproxy.cfg and deploy/haproxy-local.cfg.in differ in `defaults`"
    );
    for cfg in [&compose, &local] {
        let defaults = haproxy_section(cfg, "defaults");
        let backend = haproxy_section(cfg, "backend gateways");
        for setting in ["mode http", "timeout tunnel 1h"] {
            assert!(defaults.iter().any(|l| l == setting), "defaults: {setting}");
        }
        for setting in [
            "balance leastconn",
            "option httpchk GET /readyz",
            "http-check expect status 200",
        ] {
            assert!(backend.iter().any(|l| l == setting), "backend: {setting}");
        }
        for line in defaults.iter().chain(&backend) {
            assert!(
                !line.starts_with("cookie")
                    && !line.starts_with("stick")
                    && !line.contains("http-server-close"),
                "no stickiness, no http-server-close: {line}"
            );
        }
    }
}
