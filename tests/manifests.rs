//! The Kubernetes manifests (`deploy/k8s/`) and the compose file (`deploy/compose.yaml`) parse,
//! and every port, path, environment variable and config key they use is one the service really
//! reads: configs are loaded through `Settings::load` (which refuses unknown keys) with the
//! manifests' environment, librdkafka settings through librdkafka, probe and scrape paths are
//! asked of the service's real router, CLI flags of the real binary. No broker needed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use microfunnel::config::Settings;
use microfunnel::core::Journey;
use serde::Deserialize;
use serde_yaml::Value as Yaml;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn seq(v: &Yaml) -> &[Yaml] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// Loads a config file's text with these environment variables, as the service does at start.
fn load(config: &str, env: &[(String, String)]) -> Settings {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("manifest-{}.toml", std::process::id()));
    std::fs::write(&file, config).unwrap();
    let loaded = Settings::load(Some(&file), env.iter().cloned());
    std::fs::remove_file(&file).ok();
    loaded.unwrap_or_else(|e| panic!("the config does not load with {env:?}: {e}"))
}

/// Every `kafka.client` setting is one librdkafka knows (it refuses unknown properties).
fn check_client_keys(settings: &Settings) {
    for (k, v) in &settings.kafka.client {
        let created = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set(k, v)
            .create::<rdkafka::producer::BaseProducer>();
        assert!(created.is_ok(), "kafka.client.\"{k}\" is not a librdkafka setting: {:?}", created.err());
    }
}

/// The service's real HTTP router, served on a loopback port: the status of a GET.
struct Router {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl Router {
    fn start() -> Router {
        let journey = Journey::from_toml_str(&read(&repo("deploy/journeys/b2b.toml"))).unwrap();
        let health = microfunnel::http::Health {
            metrics: microfunnel::telemetry::Metrics::new(&journey).unwrap(),
            ready: Default::default(),
            status: Default::default(),
            query: None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, microfunnel::http::router(health)).await });
        Router { addr, _rt: rt }
    }

    fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.addr).unwrap();
        write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_string())
    }

    /// A probe path: served (the readiness probe answers 503 until the service consumes).
    fn probe(&self, path: &str, ok: &[u16]) {
        let (status, _) = self.get(path);
        assert!(ok.contains(&status), "GET {path}: {status}, not one of {ok:?}");
    }
}

/// `key` ⊆ `labels` for every pair of a selector.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let sel = selector.as_mapping().expect("a selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port number and `host` of an `ip:port` address.
fn port_of(listen: &str) -> u16 {
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn the_kubernetes_manifests_use_only_ports_paths_env_and_keys_the_service_reads() {
    let dir = repo("deploy/k8s");
    let kustomization = yaml(&dir.join("kustomization.yaml"));
    let mut objects: BTreeMap<String, Yaml> = BTreeMap::new();
    for r in seq(&kustomization["resources"]) {
        for doc in serde_yaml::Deserializer::from_str(&read(&dir.join(s(r)))) {
            let v = Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", s(r)));
            assert!(v["apiVersion"].is_string() && v["metadata"]["name"].is_string(), "{}: {v:?}", s(r));
            objects.insert(s(&v["kind"]).to_string(), v);
        }
    }
    let kinds: Vec<&str> = objects.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceMonitor", "StatefulSet"]
    );
    let (config_map, sts, svc) = (&objects["ConfigMap"], &objects["StatefulSet"], &objects["Service"]);

    // The ConfigMap carries the shipped config and journey verbatim.
    let data = &config_map["data"];
    let config_text = s(&data["microfunnel.toml"]);
    assert_eq!(config_text, read(&repo("deploy/config/production.toml")), "copy production.toml into the ConfigMap");
    assert_eq!(s(&data["b2b.toml"]), read(&repo("deploy/journeys/b2b.toml")), "copy b2b.toml into the ConfigMap");
    let rules: Yaml = yaml(&repo("deploy/prometheus/rules.yml"));
    assert_eq!(objects["PrometheusRule"]["spec"], rules, "copy rules.yml's groups into the PrometheusRule");

    let pod = &sts["spec"]["template"];
    let containers = seq(&pod["spec"]["containers"]);
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let mounts = seq(&c["volumeMounts"]);
    let volumes = seq(&pod["spec"]["volumes"]);
    // A file the container sees at `path`: the ConfigMap key behind it.
    let config_key = |path: &str| -> String {
        for m in mounts {
            let at = s(&m["mountPath"]);
            let Some(rel) = path.strip_prefix(&format!("{at}/")) else { continue };
            let vol = volumes.iter().find(|v| v["name"] == m["name"]).expect("the mount's volume");
            assert_eq!(vol["configMap"]["name"], config_map["metadata"]["name"]);
            let item = seq(&vol["configMap"]["items"]).iter().find(|i| s(&i["path"]) == rel);
            let key = item.map_or(rel.to_string(), |i| s(&i["key"]).to_string());
            assert!(data.get(&key).is_some(), "{path}: no key {key} in the ConfigMap");
            return key;
        }
        panic!("{path} is not mounted from the ConfigMap");
    };
    let args: Vec<&str> = seq(&c["args"]).iter().map(s).collect();
    assert_eq!(args[..2], ["run", "--config"]);
    assert_eq!(config_key(args[2]), "microfunnel.toml");

    // The environment: every variable a real key, with the ConfigMap's config.
    let env: Vec<(String, String)> = seq(&c["env"])
        .iter()
        .map(|e| {
            let name = s(&e["name"]).to_string();
            assert!(name.starts_with("MICROFUNNEL__"), "{name}: the service reads only MICROFUNNEL__SECTION__KEY");
            let value = match e.get("value") {
                Some(v) => s(v).to_string(),
                None => {
                    assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{name}: a value or a secret");
                    "from-a-secret".to_string()
                }
            };
            (name, value)
        })
        .collect();
    let settings = load(config_text, &env);
    assert_eq!(settings.kafka.brokers, "kafka-bootstrap.kafka:9092", "the environment overrides the file");
    assert_eq!(settings.kafka.client.get("sasl.password").map(String::as_str), Some("from-a-secret"));
    check_client_keys(&settings);
    Journey::from_toml_str(s(&data[config_key(settings.journey.path.to_str().unwrap()).as_str()])).unwrap();

    // The state volume: one claim per pod, mounted where snapshots go.
    let claims: Vec<&Yaml> = seq(&sts["spec"]["volumeClaimTemplates"]).iter().map(|t| &t["metadata"]["name"]).collect();
    let state = mounts.iter().find(|m| claims.contains(&&m["name"])).expect("a volume claim mounted");
    assert_eq!(settings.checkpoint.dir, Path::new(s(&state["mountPath"])), "checkpoint.dir is the claim's mount");
    assert_eq!(pod["spec"]["securityContext"]["fsGroup"].as_u64(), Some(10001), "the image's group owns the volume");
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"].as_u64(), Some(10001), "the image's user (Dockerfile)");

    // Ports and probes: the port the config listens on, the paths the router serves.
    let listen = settings.listen_addr();
    assert!(listen.ip().is_unspecified(), "reachable by the kubelet and Prometheus: {listen}");
    let ports = seq(&c["ports"]);
    assert_eq!(ports.len(), 1);
    let (port_name, port) = (s(&ports[0]["name"]), ports[0]["containerPort"].as_u64().unwrap());
    assert_eq!(port, u64::from(listen.port()), "containerPort is http.listen's port");
    let router = Router::start();
    for (probe, ok) in [("startupProbe", &[200][..]), ("livenessProbe", &[200]), ("readinessProbe", &[200, 503])] {
        let get = &c[probe]["httpGet"];
        assert_eq!(s(&get["port"]), port_name, "{probe} port");
        router.probe(s(&get["path"]), ok);
    }
    assert_eq!(s(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
    assert_eq!(s(&c["livenessProbe"]["httpGet"]["path"]), "/healthz");

    // Service, ServiceMonitor, PodDisruptionBudget select the pods and the named port.
    let labels = &pod["metadata"]["labels"];
    assert_eq!(sts["spec"]["serviceName"], svc["metadata"]["name"]);
    assert!(selects(&sts["spec"]["selector"]["matchLabels"], labels));
    assert!(selects(&svc["spec"]["selector"], labels), "the Service selects the pods");
    assert!(selects(&objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], labels));
    let svc_port = &seq(&svc["spec"]["ports"])[0];
    assert_eq!(s(&svc_port["targetPort"]), port_name);
    assert_eq!(svc_port["port"].as_u64(), Some(port));
    let monitor = &objects["ServiceMonitor"]["spec"];
    assert!(
        selects(&monitor["selector"]["matchLabels"], &svc["metadata"]["labels"]),
        "the monitor selects the Service"
    );
    for ep in seq(&monitor["endpoints"]) {
        assert_eq!(ep["port"], svc_port["name"], "the monitor scrapes the Service's named port");
        let (status, body) = router.get(s(&ep["path"]));
        assert!(status == 200 && body.contains("microfunnel_stage_reached_total"), "{status}: {body:.200}");
    }
}

#[test]
fn the_compose_file_uses_only_ports_paths_env_and_keys_the_service_reads() {
    let deploy = repo("deploy");
    let mut compose = yaml(&deploy.join("compose.yaml"));
    compose.apply_merge().expect("YAML merge keys resolve");
    let services = &compose["services"];
    let dockerfile = read(&repo("Dockerfile"));
    let production = read(&repo("deploy/config/production.toml"));
    let journey = Journey::from_toml_str(&read(&repo("deploy/journeys/b2b.toml"))).unwrap();
    let _ = journey;

    // The services run the image built from the Dockerfile.
    let mut ours = Vec::new();
    for name in ["topics", "microfunnel", "generator"] {
        let svc = &services[name];
        assert_eq!(s(&svc["build"]["context"]), "..", "{name} builds the repository's image");
        assert!(deploy.join("..").join(s(&svc["build"]["dockerfile"])).is_file());
        assert_eq!(s(&svc["image"]), "microfunnel:local", "{name} runs the microfunnel image");
        ours.push((name, svc));
    }
    let mut microfunnel_settings = None;
    for (name, svc) in ours {
        let command: Vec<&str> = seq(&svc["command"]).iter().map(s).collect();
        // Every flag is one the subcommand has.
        let help = Command::new(env!("CARGO_BIN_EXE_microfunnel")).args([command[0], "--help"]).output().unwrap();
        assert!(help.status.success(), "{name}: `{}` is not a subcommand", command[0]);
        let help = String::from_utf8(help.stdout).unwrap();
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            assert!(help.contains(&format!("{flag} ")), "{name}: {} has no {flag}", command[0]);
        }
        let env: Vec<(String, String)> = svc["environment"]
            .as_mapping()
            .map(|m| m.iter().map(|(k, v)| (s(k).to_string(), s(v).to_string())).collect())
            .unwrap_or_default();
        for (k, _) in &env {
            assert!(k.starts_with("MICROFUNNEL__"), "{name}: {k} is not read by the service");
        }
        if let Some(at) = command.iter().position(|a| *a == "--config") {
            let path = command[at + 1];
            assert!(
                dockerfile.contains(&format!("COPY deploy/config/production.toml {path}\n")),
                "{name}: {path} is not the image's config"
            );
            let settings = load(&production, &env);
            assert_eq!(settings.kafka.brokers, "kafka:9092");
            assert_eq!(settings.kafka.replication, 1, "{name}: a one-node cluster");
            check_client_keys(&settings);
            if name == "microfunnel" {
                microfunnel_settings = Some(settings);
            }
        } else {
            assert!(env.is_empty(), "{name}: variables for a command that reads no config");
            let brokers = command.iter().position(|a| *a == "--brokers").map(|i| command[i + 1]);
            assert_eq!(brokers, Some("kafka:9092"), "{name}");
            for (flag, topic) in [("--web-topic", "web-events"), ("--crm-topic", "crm-events")] {
                let at = command.iter().position(|a| *a == flag).unwrap();
                assert_eq!(command[at + 1], topic, "{name}: the inputs production.toml consumes");
            }
        }
    }
    let settings = microfunnel_settings.expect("the service's settings");
    let svc = &services["microfunnel"];

    // State volume, published port.
    let volumes: Vec<&str> = seq(&svc["volumes"]).iter().map(s).collect();
    let (volume, target) = volumes[0].split_once(':').unwrap();
    assert_eq!(Path::new(target), settings.checkpoint.dir, "the state volume is where snapshots go");
    assert!(compose["volumes"].get(volume).is_some(), "named volume {volume} is declared");
    let port = settings.listen_addr().port();
    assert!(settings.listen_addr().ip().is_unspecified());
    let published = s(&seq(&svc["ports"])[0]);
    assert_eq!(port_of(published), port, "{published}: the container port is http.listen's");

    // Prometheus: its config scrapes that port of the service and loads the rules mounted next to it.
    let prom = &services["prometheus"];
    let mounts: BTreeMap<String, PathBuf> = seq(&prom["volumes"])
        .iter()
        .map(|v| {
            let mut parts = s(v).split(':');
            let (host, target) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(deploy.join(host).exists(), "{host} exists");
            (target.to_string(), deploy.join(host))
        })
        .collect();
    let command: Vec<&str> = seq(&prom["command"]).iter().map(s).collect();
    let config_at = command.iter().find_map(|a| a.strip_prefix("--config.file=")).unwrap();
    let prom_config = yaml(&mounts[config_at]);
    let config_dir = Path::new(config_at).parent().unwrap();
    for r in seq(&prom_config["rule_files"]) {
        let in_container = config_dir.join(s(r)).display().to_string();
        assert_eq!(mounts.get(&in_container), Some(&repo("deploy/prometheus/rules.yml")), "{in_container}");
    }
    let job = &seq(&prom_config["scrape_configs"])[0];
    assert_eq!(s(&job["job_name"]), "microfunnel", "the job the rules expect");
    let target = s(&seq(&seq(&job["static_configs"])[0]["targets"])[0]);
    assert_eq!(target, format!("microfunnel:{port}"));
    let router = Router::start();
    let (status, body) = router.get(job.get("metrics_path").map_or("/metrics", s));
    assert!(status == 200 && body.contains("microfunnel_"), "the scrape path is served");

    // Grafana: the provisioned datasource is that Prometheus, the dashboard is where the provider reads.
    let grafana = &services["grafana"];
    let mounts: BTreeMap<String, PathBuf> = seq(&grafana["volumes"])
        .iter()
        .map(|v| {
            let mut parts = s(v).split(':');
            let (host, target) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(deploy.join(host).exists(), "{host} exists");
            (target.to_string(), deploy.join(host))
        })
        .collect();
    let provisioning = &mounts["/etc/grafana/provisioning"];
    let ds = yaml(&provisioning.join("datasources/prometheus.yaml"));
    let url = s(&seq(&ds["datasources"])[0]["url"]);
    let prom_port = s(&seq(&prom["ports"])[0]).rsplit(':').next().unwrap();
    assert_eq!(url, format!("http://prometheus:{prom_port}"));
    let provider = yaml(&provisioning.join("dashboards/microfunnel.yaml"));
    let dash_dir = s(&seq(&provider["providers"])[0]["options"]["path"]);
    let dashboard = mounts
        .iter()
        .find(|(t, _)| Path::new(t).parent() == Some(Path::new(dash_dir)))
        .expect("a dashboard in the provider's directory");
    assert_eq!(dashboard.1, &repo("deploy/grafana/microfunnel.json"));
    let home = s(&grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]);
    assert_eq!(home, dashboard.0);
}

#[test]
fn the_dockerfiles_dependency_layer_gives_cargo_a_manifest_whose_every_target_exists() {
    // The layer builds placeholder sources against the real manifests; cargo refuses a manifest
    // whose declared target (a `[[bench]]`, say) has no file, so a bench added to Cargo.toml
    // must get a placeholder too. Run the layer's shell step and ask cargo to read the result.
    let dockerfile = read(&repo("Dockerfile"));
    let run = dockerfile
        .split("\nRUN ")
        .find(|r| r.starts_with("mkdir -p src benches examples"))
        .expect("the dependency layer's RUN step");
    let step: String = run.split(" \\\n").take_while(|l| !l.contains("cargo build")).collect::<Vec<_>>().join(" ");
    let step = step.trim_end().trim_end_matches("&&").to_string();
    let dir = std::env::temp_dir().join(format!("microfunnel-docker-layer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo(f), dir.join(f)).unwrap();
    }
    let sh = Command::new("bash").arg("-c").arg(&step).current_dir(&dir).output().unwrap();
    assert!(sh.status.success(), "{step}: {}", String::from_utf8_lossy(&sh.stderr));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // `cargo fetch` parses the manifest with its targets (`metadata` does not look for their
    // files); offline, the packages are in the local registry once this project has built.
    let fetch = Command::new(cargo).args(["fetch", "--offline"]).current_dir(&dir).output().unwrap();
    assert!(
        fetch.status.success(),
        "cargo cannot read the layer's manifest: {}",
        String::from_utf8_lossy(&fetch.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
