//! The query API (`GET /prospects/{id}`, `GET /funnel`, `/signals`, `/rules`, `/forecast`) over a real socket: against a running
//! service on the broker (answers, token, unknown prospect, a partition held by the other
//! instance), and, without a broker, a shard that is restoring and the refusal to serve personal
//! data beyond loopback without a token.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use microfunnel::config::Settings;
use microfunnel::core::ids::kafka_partition;
use microfunnel::http::{self, Health, QueryApi};
use microfunnel::pipeline::query;
use microfunnel::pipeline::status::{ShardStatus, Status};
use microfunnel::telemetry::Metrics;
use serde_json::{Value, json};
use support::{Service, keyed, produce, setup, wait_until, web};

const JOIN: Duration = Duration::from_secs(30);
const TOKEN: &str = "query-test-token-8c1f";

/// GET with a bearer token over a plain TCP connection: (status, head, body).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    get_with(addr, path, token.map(|t| format!("Bearer {t}")).as_deref())
}

/// GET with an `Authorization` header value: (status, head, body).
fn get_with(addr: SocketAddr, path: &str, authorization: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(15))).expect("read timeout");
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn track(user: &str, event: &str, message_id: &str, ts: &str) -> Vec<u8> {
    json!({
        "type": "track", "event": event, "userId": user, "messageId": message_id, "timestamp": ts,
        "context": {"traits": {"email": format!("{user}@northwind.example")}},
    })
    .to_string()
    .into_bytes()
}

fn with_query_api(test: &str) -> Settings {
    let mut s = setup(test);
    s.http.query_api = true;
    s.http.token = TOKEN.to_string();
    s
}

/// The partitions an instance holds, from `/shards`.
fn held(svc: &Service) -> Vec<i64> {
    let (_, body) = support::http_get(svc.addr(), "/shards");
    let v = json_of(&body);
    v["shards"].as_array().map(|a| a.iter().filter_map(|s| s["partition"].as_i64()).collect()).unwrap_or_default()
}

#[test]
fn a_prospect_and_the_funnel_are_answered_from_the_running_state_behind_the_token() {
    let s = with_query_api("query-one");
    let svc = Service::start(&s);
    wait_until(JOIN, "the instance holds every shard", || held(&svc).len() == 3);
    let people = ["usr_q1", "usr_q2", "usr_q3", "usr_q4"];
    let mut records = Vec::new();
    for (i, p) in people.iter().enumerate() {
        records.push(keyed(p, track(p, "Whitepaper Downloaded", &format!("m-{p}-1"), "2026-03-02T09:00:00Z")));
        if i % 2 == 0 {
            records.push(keyed(p, track(p, "Demo Requested", &format!("m-{p}-2"), "2026-03-03T10:00:00Z")));
        }
    }
    produce(web(&s), &records);
    wait_until(support::DEADLINE, "every event is applied", || {
        svc.metrics().render().lines().filter(|l| l.starts_with("microfunnel_events_consumed_total")).count() > 0
            && support::total(&svc.metrics().render(), "microfunnel_events_consumed_total") == records.len() as f64
    });

    let (status, _, body) = get(svc.addr(), "/prospects/usr_q1", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let a = json_of(&body);
    assert_eq!(a["prospect"], "usr_q1");
    assert_eq!(a["partition"].as_i64(), Some(i64::from(kafka_partition(b"usr_q1", 3))));
    assert_eq!(a["stage"], "evaluating", "{a}");
    let counts = a["signal_counts"].to_string();
    assert!(counts.contains("content_downloaded") && counts.contains("demo_requested"), "{counts}");
    assert!(a["email"].is_null(), "emails are hidden unless http.show_emails: {a}");
    assert!(!body.contains("northwind.example"), "{body}");
    let w = &a["state"]["watermark"];
    assert!(w.is_null() || w.as_str().is_some_and(|w| w.starts_with("2026-")), "RFC 3339 or null: {a}");
    let positions = a["state"]["positions"].as_object().expect("the state's input positions");
    assert!(positions.get(web(&s)).and_then(Value::as_i64).is_some_and(|n| n > 0), "{a}");
    assert!(a["score"].as_f64().is_some_and(|x| x > 0.0), "{a}");

    let (status, head, _) = get(svc.addr(), "/prospects/usr_q1", None);
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(get(svc.addr(), "/prospects/usr_q1", Some("wrong-token")).0, 401);
    // The scheme name in any case (RFC 9110), the token exactly.
    assert_eq!(get_with(svc.addr(), "/prospects/usr_q1", Some(&format!("bearer {TOKEN}"))).0, 200);
    assert_eq!(get_with(svc.addr(), "/prospects/usr_q1", Some(&format!("Basic {TOKEN}"))).0, 401);
    assert_eq!(get_with(svc.addr(), "/prospects/usr_q1", Some(&format!("Bearer {}", TOKEN.to_uppercase()))).0, 401);

    let (status, _, body) = get(svc.addr(), "/prospects/nobody-here", Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    assert_eq!(json_of(&body)["partition"].as_i64(), Some(i64::from(kafka_partition(b"nobody-here", 3))));

    let (status, _, body) = get(svc.addr(), "/funnel", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let f = json_of(&body);
    assert_eq!(f["shards"], json!([0, 1, 2]));
    assert_eq!(f["prospects"].as_u64(), Some(people.len() as u64), "{f}");
    assert!(f["stages"].is_array() && f["conversion"].is_array(), "{f}");
    let (status, _, body) = get(svc.addr(), "/signals", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let sig = json_of(&body);
    assert_eq!(sig["shards"], json!([0, 1, 2]));
    assert!(sig["signals"].is_array() && sig["outcomes"]["won"].is_u64(), "{sig}");
    assert_eq!(get(svc.addr(), "/signals", None).0, 401);

    // usr_q1 asks for a quote (hot rule `quote_requested`), then wins: the signals it showed
    // count towards a sale, in /signals and in /metrics, and the rule's match in /rules.
    produce(web(&s), &[keyed("usr_q1", track("usr_q1", "Quote Requested", "m-usr_q1-3", "2026-03-03T10:30:00Z"))]);
    let won = json!({"event_id": "crm-won-q1", "prospect_id": "usr_q1", "source": "crm", "type": "deal_won",
                     "ts": "2026-03-20T12:00:00Z"});
    produce(support::crm(&s), &[keyed("usr_q1", won.to_string())]);
    let shown = |sig: &Value, name: &str| {
        sig["signals"].as_array().unwrap().iter().find(|x| x["signal"] == name).map(|x| x["won"].clone())
    };
    wait_until(support::DEADLINE, "the win is in /signals", || {
        shown(&json_of(&get(svc.addr(), "/signals", Some(TOKEN)).2), "content_downloaded") == Some(json!(1))
    });
    let sig = json_of(&get(svc.addr(), "/signals", Some(TOKEN)).2);
    assert_eq!(sig["outcomes"]["won"], 1, "{sig}");
    assert_eq!(shown(&sig, "demo_requested"), Some(json!(1)), "{sig}");
    assert_eq!(shown(&sig, "deal_won"), None, "an outcome is not a signal of itself: {sig}");
    // Quote on 03-03 10:30, won on 03-20 12:00: 17 days, in the (14 d, 30 d] bucket.
    let quote = sig["signals"].as_array().unwrap().iter().find(|x| x["signal"] == "quote_requested").unwrap();
    assert_eq!(quote["time_to_won"]["count"], 1, "{quote}");
    assert_eq!(quote["time_to_won"]["median"], json!({"from_secs": 14.0 * 86_400.0, "to_secs": 30.0 * 86_400.0}));
    // The funnel topic carries the same times as buckets per shard (sums, not medians).
    let funnel = support::read_until(&s.kafka.topics.funnel, "a funnel record with the win", |out| {
        out.iter().any(|o| o.json()["outcomes"]["won"] == 1)
    });
    let record = funnel.iter().map(|o| o.json()).find(|v| v["outcomes"]["won"] == 1).unwrap();
    let quote = record["signals"].as_array().unwrap().iter().find(|x| x["signal"] == "quote_requested").unwrap();
    let buckets: Vec<u64> =
        quote["time_to_won"]["buckets"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect();
    assert_eq!(buckets, [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], "{quote}");
    let mut m = String::new();
    wait_until(support::DEADLINE, "the outcome gauges follow at the next funnel interval", || {
        m = support::http_get(svc.addr(), "/metrics").1;
        support::sample(&m, "microfunnel_outcomes", &[("outcome", "won")]) == Some(1.0)
    });
    let gauge =
        |signal: &str| support::sample(&m, "microfunnel_signal_outcomes", &[("signal", signal), ("outcome", "won")]);
    assert_eq!(gauge("content_downloaded"), Some(1.0), "{m}");
    assert_eq!(gauge("demo_requested"), Some(1.0), "{m}");
    assert_eq!(gauge("deal_won"), None, "{m}");
    // The time from the quote (03-03) to the win (03-20) as cumulative buckets, and its median
    // as a real Prometheus computes it from them: within the (14 d, 30 d] bucket.
    let bucket = |le: &str| {
        support::sample(
            &m,
            "microfunnel_signal_to_outcome_seconds_bucket",
            &[("signal", "quote_requested"), ("outcome", "won"), ("le", le)],
        )
    };
    assert_eq!((bucket("1209600"), bucket("2592000"), bucket("+Inf")), (Some(0.0), Some(1.0), Some(1.0)), "{m}");
    let prom = support::Prometheus::start(svc.addr(), &[]);
    let median = "histogram_quantile(0.5, sum by (le) \
                  (microfunnel_signal_to_outcome_seconds_bucket{signal=\"quote_requested\",outcome=\"won\"}))";
    let mut value = f64::NAN;
    wait_until(support::DEADLINE, "Prometheus has the buckets", || {
        let v = prom.vector(median);
        value = v.first().and_then(|r| r["value"][1].as_str()).and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
        value.is_finite()
    });
    assert!(1_209_600.0 < value && value <= 2_592_000.0, "median {value} s");
    drop(prom);

    // The rule matched 17 days before the win (within the 90-day horizon): precision and
    // capture 1, the median lead time in the (14 d, 30 d] bucket.
    let (status, _, body) = get(svc.addr(), "/rules", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let r = json_of(&body);
    assert_eq!((r["shards"].clone(), r["alert_horizon_days"].clone()), (json!([0, 1, 2]), json!(90.0)), "{r}");
    let rule = |name: &str| r["rules"].as_array().unwrap().iter().find(|x| x["rule"] == name).cloned().unwrap();
    let q = rule("quote_requested");
    assert_eq!((q["won"].clone(), q["won_later"].clone(), q["lost"].clone()), (json!(1), json!(0), json!(0)), "{q}");
    assert_eq!((q["precision"].clone(), q["capture"].clone()), (json!(1.0), json!(1.0)), "{q}");
    assert_eq!(q["lead_time_median"], json!({"from_secs": 1_209_600.0, "to_secs": 2_592_000.0}), "{q}");
    assert_eq!(rule("any")["won"], 1, "{r}");
    assert_eq!(rule("clarification_after_quote")["won"], 0, "{r}");
    let won_by_band: u64 = r["score_bands"].as_array().unwrap().iter().map(|b| b["won"].as_u64().unwrap()).sum();
    assert_eq!(won_by_band, 1, "{r}");
    assert_eq!(get(svc.addr(), "/rules", None).0, 401);
    let rule_gauge = |rule: &str, result: &str| {
        support::sample(&m, "microfunnel_rule_outcomes", &[("rule", rule), ("result", result)])
    };
    assert_eq!((rule_gauge("quote_requested", "won"), rule_gauge("any", "won")), (Some(1.0), Some(1.0)), "{m}");
    assert_eq!(rule_gauge("quote_requested", "lost"), Some(0.0), "{m}");

    // The forecast of the shards held, at their latest confirmed clock (the win, 17 days ahead
    // of every other event, is not confirmed yet): all four are open.
    let (status, _, body) = get(svc.addr(), "/forecast?horizon_days=14", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let fc = json_of(&body);
    assert_eq!(fc["shards"], json!([0, 1, 2]));
    assert_eq!(fc["forecast"]["open"], 4, "{fc}");
    assert_eq!(fc["forecast"]["at"], "2026-03-03T10:30:00.000Z", "{fc}");
    assert_eq!(fc["forecast"]["horizon_days"], 14.0, "{fc}");
    assert!(fc["forecast"]["stages"].as_array().is_some_and(|s| !s.is_empty()), "{fc}");
    assert!(fc["backtest"]["brier"].is_number(), "{fc}");
    assert_eq!(get(svc.addr(), "/forecast?horizon_days=-1", Some(TOKEN)).0, 400);
    assert_eq!(get(svc.addr(), "/forecast", None).0, 401);
    svc.stop().expect("graceful stop");
}

/// Two instances of one group, each advertising its query API's URL on `<group>.members`: a
/// request to the instance that does not hold the prospect's partition answers 421 naming the
/// other instance and its URL (body and `Location`), which answers 200; once that instance stops,
/// its tombstone takes it out of the survivor's table, and the survivor holds every partition
/// and answers 200 itself.
#[test]
fn a_prospect_on_the_other_instance_is_answered_there_and_named_here() {
    let s = with_query_api("query-two");
    let at_port = |port: u16| {
        let mut s = s.clone();
        s.http.listen = format!("127.0.0.1:{port}");
        s.http.advertised_url = format!("http://127.0.0.1:{port}");
        s
    };
    let (one, two) = (Service::start(&at_port(support::free_port())), Service::start(&at_port(support::free_port())));
    wait_until(JOIN, "both instances hold shards", || {
        let (a, b) = (held(&one), held(&two));
        !a.is_empty() && !b.is_empty() && a.len() + b.len() == 3
    });
    // A prospect whose partition the second instance holds.
    let theirs = held(&two);
    let id = (0..1000)
        .map(|n| format!("usr_far_{n}"))
        .find(|id| theirs.contains(&i64::from(kafka_partition(id.as_bytes(), 3))))
        .expect("some id hashes to the second instance's partitions");
    let records = [keyed(&id, track(&id, "Webinar Registered", "m-far-1", "2026-03-02T09:00:00Z"))];
    produce(web(&s), &records);
    wait_until(support::DEADLINE, "the second instance answers for it", || {
        get(two.addr(), &format!("/prospects/{id}"), Some(TOKEN)).0 == 200
    });
    let two_url = format!("http://{}", two.addr());
    let two_instance = json_of(&support::http_get(two.addr(), "/shards").1)["instance"].clone();
    assert!(two_instance.as_str().is_some_and(|i| !i.is_empty()), "{two_instance}");
    let path = format!("/prospects/{id}");
    let mut answer = (0, String::new(), String::new());
    wait_until(support::DEADLINE, "the first instance names the second in its 421", || {
        answer = get(one.addr(), &path, Some(TOKEN));
        answer.0 == 421 && json_of(&answer.2)["owner"]["url"] == json!(two_url)
    });
    let (_, head, body) = answer;
    let v = json_of(&body);
    assert_eq!(v["partition"].as_i64(), Some(i64::from(kafka_partition(id.as_bytes(), 3))));
    assert_eq!(v["owner"]["instance"], two_instance, "{body}");
    assert!(head.contains(&format!("location: {two_url}{path}\r\n").to_ascii_lowercase()), "{head}");
    // The URL it names answers for the prospect.
    let (status, _, body) = get(two.addr(), v["location"].as_str().unwrap().trim_start_matches(&two_url), Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body)["prospect"], json!(id));
    // The first instance's table lists the second (`GET /shards`, `members`).
    wait_until(support::DEADLINE, "the first instance's table lists the second", || {
        members(&one).contains(&two_instance)
    });
    two.stop().expect("stop two");
    // Its tombstone takes it out of the survivor's table, long before a record goes stale
    // (STALE_AFTER, 90 s) and before any republication.
    wait_until(JOIN, "the survivor's table no longer lists the stopped instance", || {
        !members(&one).contains(&two_instance)
    });
    wait_until(JOIN, "the survivor holds every partition and answers for the prospect", || {
        held(&one).len() == 3 && get(one.addr(), &path, Some(TOKEN)).0 == 200
    });
    one.stop().expect("stop one");
}

/// The instances an instance's membership table lists, from `/shards`.
fn members(svc: &Service) -> Vec<Value> {
    let (_, body) = support::http_get(svc.addr(), "/shards");
    let v = json_of(&body);
    v["members"].as_array().map(|a| a.iter().map(|m| m["instance"].clone()).collect()).unwrap_or_default()
}

/// Serves `health` on an ephemeral loopback port until the test ends.
fn serve(health: Health) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, http::router(health)).await.unwrap();
        });
    });
    addr
}

#[test]
fn a_restoring_shard_answers_503_with_retry_after_and_a_stopped_pipeline_too() {
    let journey = support::journey();
    let status = Status::default();
    let (queries, inbox) = query::channel(4);
    inbox.set_partitions(3);
    let restoring = kafka_partition(b"usr_q1", 3) as i32;
    status.set(restoring, ShardStatus::restoring(restoring));
    let health = Health {
        metrics: Metrics::new(&journey).unwrap(),
        ready: Arc::new(AtomicBool::new(false)),
        status,
        query: Some(QueryApi { queries, token: None, show_emails: false }),
    };
    let addr = serve(health);
    let (code, head, body) = get(addr, "/prospects/usr_q1", None);
    assert_eq!(code, 503, "{body}");
    assert!(head.contains("retry-after: 5"), "{head}");
    assert!(body.contains("restoring"), "{body}");
    // No pipeline answers (its side is gone): 503 too, never a hang.
    drop(inbox);
    let other = (0..100).map(|n| format!("id-{n}")).find(|id| kafka_partition(id.as_bytes(), 3) as i32 != restoring);
    let (code, head, body) = get(addr, &format!("/prospects/{}", other.unwrap()), None);
    assert_eq!(code, 503, "{body}");
    assert!(head.contains("retry-after"), "{head}");
}

#[test]
fn an_instance_that_holds_no_shard_answers_503_not_421() {
    let journey = support::journey();
    let (queries, inbox) = query::channel(4);
    inbox.set_partitions(3);
    let health = Health {
        metrics: Metrics::new(&journey).unwrap(),
        ready: Arc::new(AtomicBool::new(false)),
        status: Status::default(),
        query: Some(QueryApi { queries, token: None, show_emails: false }),
    };
    let addr = serve(health);
    let (code, head, body) = get(addr, "/prospects/usr_q1", None);
    assert_eq!(code, 503, "joining or rebalancing, nobody to point at: {body}");
    assert!(head.contains("retry-after: 5") && body.contains("no shard"), "{head}{body}");
    drop(inbox);
}

#[test]
fn the_query_api_is_off_by_default_and_refused_beyond_loopback_without_a_token() {
    let journey = support::journey();
    let health = Health {
        metrics: Metrics::new(&journey).unwrap(),
        ready: Arc::new(AtomicBool::new(true)),
        status: Status::default(),
        query: None,
    };
    let addr = serve(health);
    assert_eq!(get(addr, "/prospects/usr_q1", None).0, 404);
    assert_eq!(get(addr, "/funnel", None).0, 404);

    let var = |k: &str, v: &str| (format!("MICROFUNNEL__{k}"), v.to_string());
    let base = [var("KAFKA__BROKERS", "127.0.0.1:9"), var("HTTP__LISTEN", "0.0.0.0:9464")];
    let on = [base.clone().as_slice(), &[var("HTTP__QUERY_API", "true")]].concat();
    let err = Settings::load(None, on.clone()).expect_err("no token beyond loopback is refused").to_string();
    assert!(err.contains("http.token"), "{err}");
    let with_token = [on.as_slice(), &[var("HTTP__TOKEN", TOKEN)]].concat();
    assert!(Settings::load(None, with_token).is_ok());
    assert!(Settings::load(None, base.to_vec()).is_ok(), "the API off: no token needed");
    let loopback = [var("KAFKA__BROKERS", "127.0.0.1:9"), var("HTTP__QUERY_API", "true")];
    assert!(Settings::load(None, loopback.to_vec()).is_ok(), "loopback needs no token");
    for weak in [" ", "short-token", &format!(" {TOKEN}")] {
        let with_weak = [on.as_slice(), &[var("HTTP__TOKEN", weak)]].concat();
        let err = Settings::load(None, with_weak).expect_err("a blank, short or padded token is refused").to_string();
        assert!(err.contains("http.token") && err.contains("16"), "{weak:?}: {err}");
    } // The advertised URL other instances' 421s name must be an http(s) URL.
    let loopback = [var("KAFKA__BROKERS", "127.0.0.1:9"), var("HTTP__QUERY_API", "true")];
    for bad in ["10.0.3.7:9464", "ftp://10.0.3.7", "http://"] {
        let with_bad = [loopback.as_slice(), &[var("HTTP__ADVERTISED_URL", bad)]].concat();
        let err = Settings::load(None, with_bad).expect_err("not an http(s) URL").to_string();
        assert!(err.contains("http.advertised_url"), "{bad:?}: {err}");
    }
    let good = [loopback.as_slice(), &[var("HTTP__ADVERTISED_URL", "http://10.0.3.7:9464")]].concat();
    assert_eq!(Settings::load(None, good).unwrap().http.advertised_url, "http://10.0.3.7:9464");
}

/// With identity resolution across partitions and two instances: an anonymous id on one
/// instance's partition, folded at signup into a user whose partition the other instance
/// holds. Asked for the anonymous id, the instance holding its partition (whose identity map
/// routes it to the user) answers 421 naming the user's partition and the other instance; that
/// instance answers 200 with the user's state and both ids in `linked_ids`.
#[test]
fn a_linked_id_whose_canonical_prospect_is_on_the_other_instance_is_named_there() {
    let mut s = with_query_api("query-linked");
    s.kafka.resume_rewind = 0;
    s.checkpoint.changelog = true;
    let journey = format!("{}\n[identity]\nresolve = true\n", include_str!("../deploy/journeys/b2b.toml"));
    let journey = Arc::new(microfunnel::core::Journey::from_toml_str(&journey).expect("the journey loads"));
    let at_port = |port: u16, state: &str| {
        let mut s = s.clone();
        s.http.listen = format!("127.0.0.1:{port}");
        s.http.advertised_url = format!("http://127.0.0.1:{port}");
        s.checkpoint.dir = support::state_dir(&support::unique(state));
        s
    };
    let one = Service::start_with(&at_port(support::free_port(), "query-linked-one"), Arc::clone(&journey));
    let two = Service::start_with(&at_port(support::free_port(), "query-linked-two"), journey);
    wait_until(JOIN, "both instances hold shards", || {
        let (a, b) = (held(&one), held(&two));
        !a.is_empty() && !b.is_empty() && a.len() + b.len() == 3
    });
    // The anonymous id on the first instance's partition, the user on the second's.
    let (ours, theirs) = (held(&one)[0] as u32, held(&two)[0] as u32);
    let anon = support::key_in_partition("anon-linked-", ours, 3);
    let user = support::key_in_partition("usr_linked_", theirs, 3);
    let seg = |kind: &str, event: &str, user: Option<&str>, id: &str, ts: &str| {
        let mut v = json!({"type": kind, "anonymousId": anon, "userId": user, "messageId": id, "timestamp": ts});
        if !event.is_empty() {
            v["event"] = json!(event);
        }
        v.to_string().into_bytes()
    };
    produce(
        web(&s),
        &[
            keyed(&anon, seg("page", "", None, "l-1", "2026-03-02T09:00:00Z")),
            keyed(&anon, seg("track", "Whitepaper Downloaded", None, "l-2", "2026-03-02T09:05:00Z")),
            keyed(&user, seg("identify", "", Some(&user), "l-3", "2026-03-03T10:00:00Z")),
        ],
    );
    // The anonymous history moved to the user (on the second instance).
    wait_until(support::DEADLINE, "the anonymous history folded into the user", || {
        let (code, _, body) = get(two.addr(), &format!("/prospects/{user}"), Some(TOKEN));
        code == 200 && body.contains("content_downloaded")
    });
    let two_url = format!("http://{}", two.addr());
    let path = format!("/prospects/{anon}");
    let mut answer = (0, String::new(), String::new());
    wait_until(support::DEADLINE, "the first instance names the second for the anonymous id", || {
        answer = get(one.addr(), &path, Some(TOKEN));
        answer.0 == 421 && json_of(&answer.2)["owner"]["url"] == json!(two_url)
    });
    let v = json_of(&answer.2);
    assert_eq!(v["partition"].as_i64(), Some(i64::from(theirs)), "the user's partition: {v}");
    assert_eq!(v["location"], json!(format!("{two_url}{path}")), "{v}");
    let (code, _, body) = get(two.addr(), &path, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    let p = json_of(&body);
    assert_eq!(p["prospect"], json!(user), "{p}");
    let mut linked = vec![anon.clone(), user.clone()];
    linked.sort();
    assert_eq!(p["linked_ids"], json!(linked), "{p}");
    one.stop().expect("stop one");
    two.stop().expect("stop two");
}
