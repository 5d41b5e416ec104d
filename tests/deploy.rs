//! What operators deploy, run for real: the Grafana dashboard's and the Prometheus rules' every
//! query on a real Prometheus server scraping a real run (local broker, generated traffic), and
//! the container image's start-up path (its config, environment, user and working directory)
//! without Docker.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::*;

const PARTITIONS: usize = 3;
/// Joining the group (up to half the session timeout on Tansu) and reading everything.
const FINISH: Duration = Duration::from_secs(120);
/// The sentence that marks a dashboard panel whose every query must return data after a run.
const SHOWS_DATA: &str = "Non-empty after any run with traffic.";
const NEEDS_OUTCOMES: &str = "Empty until deals close.";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Grafana's variables as a dashboard over the test's whole run would set them.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$__interval", "1s")
}

/// (panel title, marked as showing data, its queries) of every panel of the dashboard.
fn dashboard_panels() -> Vec<(String, bool, Vec<String>)> {
    let text = std::fs::read_to_string(repo("deploy/grafana/microfunnel.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    panels
        .iter()
        .filter(|p| p["type"] != "row")
        .map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            let description = p["description"].as_str().unwrap_or_default();
            let marked = description.ends_with(SHOWS_DATA);
            // A panel not checked for data says why: it reads outcomes, which this run has none of.
            assert!(marked || description.ends_with(NEEDS_OUTCOMES), "panel {title}: {description:?}");
            let exprs: Vec<String> =
                p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()).collect();
            assert!(!exprs.is_empty(), "panel {title} has no query");
            (title, marked, exprs)
        })
        .collect()
}

/// (name, expression) of every recording and alerting rule.
fn rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/rules.yml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule.get("record").or_else(|| rule.get("alert")).and_then(|n| n.as_str()).unwrap();
            out.push((name.to_string(), rule["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn every_dashboard_and_rule_query_runs_on_a_real_prometheus_and_marked_panels_show_data() {
    let panels = dashboard_panels();
    let rules = rules();
    let s = setup("deploy-dashboard");
    let (web_file, crm_file) = gen_per_topic(&s.kafka.group_id, &["--malformed", "0.01"]);

    let started = unix_now();
    let svc = Service::start(&s);
    let metrics = svc.metrics();
    let prom = Prometheus::start(svc.addr(), &[repo("deploy/prometheus/rules.yml")]);
    // A first scrape before any traffic, so every counter's increase starts from its zero.
    wait_until(DEADLINE, "Prometheus scraped the service once", || {
        prom.vector(r#"up{job="microfunnel"}"#).first().is_some_and(|s| value(s) == 1.0)
    });
    // The time of the last event starts at the pipeline's start.
    let last_event =
        |text: &str, topic: &str| sample(text, "microfunnel_last_event_timestamp_seconds", &[("topic", topic)]);
    wait_until(DEADLINE, "the pipeline started", || last_event(&metrics.render(), web(&s)).is_some());
    let at_start: Vec<f64> = s.kafka.input_topics.iter().map(|t| last_event(&metrics.render(), t).unwrap()).collect();
    let (web_records, crm_records) = (records(&web_file), records(&crm_file));
    // The CRM's history first: its quotes arm ghost timers that the website's later events fire.
    let crm_at = produce(crm(&s), &crm_records);
    let web_at = produce(web(&s), &web_records);
    let ends = end_offsets([(web(&s), web_at.as_slice()), (crm(&s), crm_at.as_slice())]);
    checkpointed(&svc, ends.values().sum(), PARTITIONS, FINISH);

    let text = metrics.render();
    let reached: BTreeMap<String, f64> =
        samples(&text, "microfunnel_stage_reached_total").into_iter().map(|(l, v)| (l["stage"].clone(), v)).collect();
    let durable = samples(&text, "microfunnel_checkpoint_last_success_timestamp_seconds");
    assert_eq!(durable.len(), PARTITIONS, "every shard: {durable:?}");
    assert!(durable.iter().all(|(_, t)| *t >= started && *t <= unix_now()), "{durable:?} since {started}");
    for (topic, at_start) in s.kafka.input_topics.iter().zip(at_start) {
        let last = last_event(&text, topic).unwrap();
        assert!(at_start >= started && last > at_start && last <= unix_now(), "{topic}: {at_start}, then {last}");
    }

    // Prometheus has scraped the end state and evaluated the rules.
    let reached_total: f64 = reached.values().sum();
    wait_until(DEADLINE, "Prometheus scraped every stage reached", || {
        prom.vector("sum(microfunnel_stage_reached_total)").first().is_some_and(|s| value(s) == reached_total)
    });
    // Lag is read every 5 s.
    wait_until(DEADLINE, "Prometheus scraped the consumer lag", || !prom.vector("microfunnel_consumer_lag").is_empty());
    wait_until(Duration::from_secs(30), "the shipped rules load and evaluate", || {
        prom.get("/api/v1/rules").is_some_and(|(_, body)| {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            let loaded = v["data"]["groups"][0]["rules"].as_array().cloned().unwrap_or_default();
            loaded.len() == rules.len()
                && loaded.iter().all(|r| r["health"] == "ok" && r["lastEvaluation"].as_str() > Some("2000"))
        })
    });
    for (name, expr) in &rules {
        let v = prom.query(expr);
        assert_eq!(v["status"], "success", "rule {name} does not evaluate: {v}");
    }
    let mut marked = 0;
    for (title, shows_data, exprs) in &panels {
        for expr in exprs {
            let promql = grafana_to_promql(expr);
            let v = prom.query(&promql);
            assert_eq!(v["status"], "success", "panel {title:?}: {promql} does not evaluate: {v}");
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            assert!(!*shows_data || !result.is_empty(), "panel {title:?} shows no data: {promql}");
        }
        marked += usize::from(*shows_data);
    }
    assert!(marked * 4 >= panels.len() * 3, "most panels are checked for data: {marked} of {}", panels.len());
    // Step conversion as the dashboard shows it: reached next / reached, per funnel step.
    let (_, _, exprs) = panels.iter().find(|(t, _, _)| t.starts_with("Step conversion")).unwrap();
    let shown = prom.vector(&grafana_to_promql(&exprs[0]));
    svc.stop().unwrap();

    // The new counters say what the engines' funnels say: the shards' last funnel records
    // (published at the stop) and the alerts sent.
    let text = metrics.render();
    let funnels = metrics.sent.funnel.get() as usize;
    let records = read_until(&s.kafka.topics.funnel, "every funnel record", |r| r.len() >= funnels);
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for r in &records {
        last.insert(r.key.clone().unwrap(), r.json());
    }
    assert_eq!(last.len(), PARTITIONS);
    let journey = journey();
    let mut per_stage: BTreeMap<(String, &str), f64> = BTreeMap::new();
    for report in last.values() {
        for st in report["stages"].as_array().unwrap() {
            for kind in ["reached", "ghosted", "stalled"] {
                *per_stage.entry((st["stage"].as_str().unwrap().to_string(), kind)).or_default() +=
                    st[kind].as_f64().unwrap();
            }
        }
    }
    for st in &journey.stages {
        let want = |kind| per_stage[&(st.name.clone(), kind)];
        let got = |name: &str| sample(&text, name, &[("stage", &st.name)]);
        if st.terminal {
            assert_eq!(got("microfunnel_stage_reached_total"), None, "a terminal stage is not a funnel step");
        } else {
            assert_eq!(got("microfunnel_stage_reached_total"), Some(want("reached")), "reached {}", st.name);
        }
        assert_eq!(got("microfunnel_ghosted_total"), Some(want("ghosted")), "ghosted in {}", st.name);
        assert_eq!(got("microfunnel_stalled_total"), Some(want("stalled")), "stalled in {}", st.name);
    }
    assert!(per_stage.iter().any(|((_, k), n)| *k == "ghosted" && *n > 0.0), "the traffic ghosts someone");
    let steps: Vec<&str> = journey.stages.iter().filter(|s| !s.terminal).map(|s| s.name.as_str()).collect();
    assert_eq!(shown.len(), steps.len() - 1, "one row per funnel step: {shown:?}");
    for w in steps.windows(2) {
        let row = shown
            .iter()
            .find(|r| r["metric"]["stage"] == w[0] && r["metric"]["next"] == w[1])
            .unwrap_or_else(|| panic!("no step {w:?} in {shown:?}"));
        let (from, to) = (per_stage[&(w[0].to_string(), "reached")], per_stage[&(w[1].to_string(), "reached")]);
        let want = if from > 0.0 { to / from } else { 0.0 };
        assert!((value(row) - want).abs() < 1e-9, "step {w:?}: the dashboard shows {}, the funnel {want}", value(row));
    }
    let alerts = metrics.hot_leads.get() as usize;
    assert!(alerts > 0, "the traffic raises hot leads");
    let leads = read_until(&s.kafka.topics.hot_leads, "every alert", |r| r.len() >= alerts);
    let mut by_rule: BTreeMap<String, f64> = BTreeMap::new();
    for l in &leads {
        for r in l.json()["rules"].as_array().unwrap() {
            *by_rule.entry(r.as_str().unwrap().to_string()).or_default() += 1.0;
        }
    }
    for (labels, v) in samples(&text, "microfunnel_hot_lead_rules_total") {
        assert_eq!(v, by_rule.get(&labels["rule"]).copied().unwrap_or(0.0), "hot leads by rule {labels:?}");
    }
}

// ---- the container's start-up path --------------------------------------------------------

/// What the Dockerfile's runtime stage declares.
struct Image {
    env: Vec<(String, String)>,
    user: String,
    workdir: String,
    volume: String,
    port: u16,
    healthcheck: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    /// (image path, repository path) of each COPY from the build context.
    copies: Vec<(String, String)>,
    /// The RUN commands.
    runs: Vec<String>,
}

fn image() -> Image {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    // Continuation lines joined; only the last stage (the runtime image) counts.
    let joined = text.replace("\\\n", " ");
    let runtime = joined.rsplit_once("\nFROM ").expect("a multi-stage build").1;
    let mut img = Image {
        env: Vec::new(),
        user: String::new(),
        workdir: "/".into(),
        volume: String::new(),
        port: 0,
        healthcheck: String::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        copies: Vec::new(),
        runs: Vec::new(),
    };
    let json_array = |s: &str| -> Vec<String> { serde_json::from_str(s.trim()).expect("exec form") };
    for line in runtime.lines().map(str::trim) {
        let (inst, rest) = line.split_once(' ').unwrap_or((line, ""));
        match inst {
            "ENV" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
                    img.env.push((k.to_string(), v.to_string()));
                }
            }
            "USER" => img.user = rest.trim().to_string(),
            "RUN" => img.runs.push(rest.to_string()),
            "WORKDIR" => img.workdir = rest.trim().to_string(),
            "VOLUME" => img.volume = json_array(rest).remove(0),
            "EXPOSE" => img.port = rest.trim().trim_end_matches("/tcp").parse().unwrap(),
            "HEALTHCHECK" => img.healthcheck = rest.split_once(" CMD ").expect("HEALTHCHECK CMD").1.trim().to_string(),
            "ENTRYPOINT" => img.entrypoint = json_array(rest),
            "CMD" => img.cmd = json_array(rest),
            "COPY" if !rest.starts_with("--from") => {
                let (src, dst) = rest.split_once(' ').unwrap();
                img.copies.push((dst.trim().to_string(), src.trim().to_string()));
            }
            _ => {}
        }
    }
    img
}

impl Image {
    /// The repository file the image has at `path` (through its COPY lines).
    fn source_of(&self, path: &str) -> PathBuf {
        let (dst, src) = self
            .copies
            .iter()
            .find(|(dst, _)| path == dst || path.starts_with(&format!("{dst}/")))
            .unwrap_or_else(|| panic!("{path} is not copied into the image"));
        repo(&format!("{src}{}", &path[dst.len()..]))
    }
}

#[test]
fn the_image_start_up_path_runs_from_root_as_its_non_root_user_and_becomes_ready() {
    let img = image();
    let (uid, gid) = img.user.split_once(':').expect("USER uid:gid");
    assert!(uid.parse::<u32>().unwrap() != 0, "a non-root user");
    assert_eq!(img.workdir, "/");
    assert_eq!(img.entrypoint, ["/usr/local/bin/microfunnel"]);
    let at = img.cmd.iter().position(|a| a == "--config").expect("CMD passes --config");
    let config = img.source_of(&img.cmd[at + 1]);

    // The bundled config as the image has it: absolute paths into the image, the state
    // volume, the exposed port on every interface, no local-broker workaround.
    let env: Vec<(String, String)> = img.env.clone();
    let bundled = microfunnel::config::Settings::load(Some(&config), env.clone()).unwrap();
    assert_eq!(bundled.kafka.resume_rewind, 0, "no Tansu workaround in production");
    assert!(bundled.journey.path.is_absolute() && img.source_of(bundled.journey.path.to_str().unwrap()).is_file());
    assert_eq!(bundled.checkpoint.dir, Path::new(&img.volume), "snapshots go to the image's volume");
    let listen = bundled.listen_addr();
    assert!(listen.ip().is_unspecified() && listen.port() == img.port, "{listen} vs EXPOSE {}", img.port);
    assert!(img.healthcheck.contains(&format!("/{}", img.port)) && img.healthcheck.contains("/healthz"));

    // Started as the image starts it: its ENTRYPOINT and CMD from /, as its user, with its
    // config and environment. Overridden: where the broker and this test's topics are, and the
    // port (a shared machine).
    let s = setup("deploy-image");
    let port = free_port();
    let k = &s.kafka;
    let mut vars = vec![
        ("MICROFUNNEL__KAFKA__BROKERS", brokers().to_string()),
        ("MICROFUNNEL__KAFKA__GROUP_ID", k.group_id.clone()),
        ("MICROFUNNEL__KAFKA__INPUT_TOPICS", k.input_topics.join(",")),
        ("MICROFUNNEL__KAFKA__TOPICS__HOT_LEADS", k.topics.hot_leads.clone()),
        ("MICROFUNNEL__KAFKA__TOPICS__JOURNEY_EVENTS", k.topics.journey_events.clone()),
        ("MICROFUNNEL__KAFKA__TOPICS__FUNNEL", k.topics.funnel.clone()),
        ("MICROFUNNEL__KAFKA__TOPICS__DEAD_LETTER", k.topics.dead_letter.clone()),
        ("MICROFUNNEL__HTTP__LISTEN", format!("0.0.0.0:{port}")),
    ];
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let (mut run, volume, root) = if as_root {
        // The image's files at the image's paths in a root of their own (its COPY lines, the
        // volume owned by its user, the binary's shared libraries standing in for the base
        // image), entered with chroot as the image's user.
        let root = image_root(&img);
        let mut c = Command::new("chroot");
        c.arg(format!("--userspec={uid}:{gid}")).arg(&root).args(&img.entrypoint).args(&img.cmd);
        (c, root.join(img.volume.trim_start_matches('/')), Some(root))
    } else {
        // Not root: this user is not root either. The image's paths do not exist here: the
        // journey and the volume come from the repository and a directory of the test's own.
        let volume = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("volume"));
        std::fs::create_dir_all(&volume).unwrap();
        let journey = img.source_of(bundled.journey.path.to_str().unwrap());
        vars.push(("MICROFUNNEL__JOURNEY__PATH", journey.display().to_string()));
        vars.push(("MICROFUNNEL__CHECKPOINT__DIR", volume.display().to_string()));
        let mut c = Command::new(env!("CARGO_BIN_EXE_microfunnel"));
        c.args(img.cmd.iter().take(at + 1)).arg(&config);
        (c, volume, None)
    };
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", k.group_id));
    let mut child = run
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let addr = ([127, 0, 0, 1], port).into();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the service exited ({status}) before it was ready:\n{err}");
        }
        if std::net::TcpStream::connect(addr).is_ok() && http_get(addr, "/readyz").0 == 200 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "not ready within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The image's HEALTHCHECK command, as Docker runs it (shell form), on this port.
    let check = img.healthcheck.replace(&format!("/{}", img.port), &format!("/{port}"));
    let ok = Command::new("/bin/sh").arg("-c").arg(&check).status().unwrap();
    assert!(ok.success(), "HEALTHCHECK fails: {check}");

    // It processes, and its user writes snapshots to the volume.
    let t = "2026-03-02T10:00:00Z";
    produce(
        web(&s),
        &[keyed(
            "usr_img",
            format!(
                r#"{{"event_id":"img-1","prospect_id":"usr_img","source":"web","type":"quote_requested","ts":"{t}"}}"#
            ),
        )],
    );
    read_until(&k.topics.hot_leads, "the alert", |r| !r.is_empty());
    let group_dir = volume.join(&k.group_id);
    wait_until(DEADLINE, "a snapshot file in the volume", || {
        std::fs::read_dir(&group_dir).into_iter().flatten().flatten().any(|shard| {
            std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
                .any(|f| f.file_name().to_string_lossy().ends_with(".snap"))
        })
    });
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let stopping = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(stopping.elapsed() < Duration::from_secs(30), "no exit within the shutdown deadline");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "graceful stop");
    std::fs::remove_dir_all(root.unwrap_or(volume)).ok();
}

/// A root file system laid out as the image's runtime stage: each COPY of the build context, the
/// build stage's binary (this build's), the volume directory owned by the image's user, and the
/// shared libraries the binary loads (what the base image provides).
fn image_root(img: &Image) -> PathBuf {
    use std::os::unix::fs::{PermissionsExt, chown};
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("image-root"));
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let put = |from: &Path, to: &Path| {
        // The file itself, not a symbolic link to a path outside the root.
        let from = &std::fs::canonicalize(from).unwrap();
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to).unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
        }
    };
    fn tree(from: &Path, to: &Path, put: &dyn Fn(&Path, &Path)) {
        if from.is_dir() {
            for e in std::fs::read_dir(from).unwrap().flatten() {
                tree(&e.path(), &to.join(e.file_name()), put);
            }
        } else {
            put(from, to);
        }
    }
    for (dst, _) in &img.copies {
        tree(&img.source_of(dst), &at(dst), &put);
    }
    put(Path::new(env!("CARGO_BIN_EXE_microfunnel")), &at(&img.entrypoint[0]));
    let ldd = Command::new("ldd").arg(env!("CARGO_BIN_EXE_microfunnel")).output().expect("ldd");
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        put(Path::new(lib), &at(lib));
    }
    let (uid, gid) = img.user.split_once(':').unwrap();
    let owned = format!("chown {uid}:{gid} {}", img.volume);
    assert!(img.runs.iter().any(|r| r.contains(&owned)), "the image gives its user the volume: `{owned}`");
    std::fs::create_dir_all(at(&img.volume)).unwrap();
    chown(at(&img.volume), Some(uid.parse().unwrap()), Some(gid.parse().unwrap())).unwrap();
    // Directories readable by the user, as in an image.
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        dirs.extend(
            std::fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir() && !p.is_symlink()),
        );
    }
    root
}
